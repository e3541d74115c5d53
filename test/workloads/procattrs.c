/* Per-process attributes read back every pass (10 ms) and compared with the
 * values captured at start: cwd (a subdirectory next to the log), umask 027,
 * every rlimit (RLIMIT_NOFILE soft lowered to 200), comm "phaul-attrs",
 * /proc/self/cmdline and environ, brk (sbrk(0)) and the mm fields of
 * /proc/self/stat (code/data/brk/stack/arg/env bounds), /proc/self/auxv,
 * getauxval(AT_PAGESZ) and the 16 AT_RANDOM bytes, readlink /proc/self/exe,
 * pid/tid, process group and session, /proc/self/oom_score_adj 123.
 * Logs "OK <pass>". */
#include "common.h"
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define COMM "phaul-attrs"

struct snap {
	char cwd[4096];
	char cmdline[8192];
	ssize_t cmdline_len;
	char environ_[65536];
	ssize_t environ_len;
	char auxv[4096];
	ssize_t auxv_len;
	char exe[4096];
	unsigned long statf[64]; /* selected /proc/self/stat fields by number */
	struct rlimit rl[RLIM_NLIMITS];
	void *brk;
	char random[16];
};

static const int stat_fields[] = { 26, 27, 28, 45, 46, 47, 48, 49, 50, 51 };
static const char *stat_names[] = { "start_code", "end_code", "start_stack", "start_data", "end_data",
				    "start_brk", "arg_start", "arg_end", "env_start", "env_end" };

static void take(struct snap *s)
{
	memset(s, 0, sizeof *s);
	CHECK(getcwd(s->cwd, sizeof s->cwd) != NULL, "getcwd errno %d", errno);
	s->cmdline_len = read_file("/proc/self/cmdline", s->cmdline, sizeof s->cmdline);
	s->environ_len = read_file("/proc/self/environ", s->environ_, sizeof s->environ_);
	s->auxv_len = read_file("/proc/self/auxv", s->auxv, sizeof s->auxv);
	CHECK(s->cmdline_len > 0 && s->environ_len >= 0 && s->auxv_len > 0, "read /proc/self files");
	ssize_t n = readlink("/proc/self/exe", s->exe, sizeof s->exe - 1);
	CHECK(n > 0, "readlink /proc/self/exe");
	s->exe[n] = 0;
	char buf[4096];
	n = read_file("/proc/self/stat", buf, sizeof buf - 1);
	CHECK(n > 0, "read /proc/self/stat");
	buf[n] = 0;
	char *p = strrchr(buf, ')'); /* field 2 (comm) may contain spaces */
	CHECK(p != NULL, "parse stat");
	p += 2;
	for (int f = 3; f < 64 && *p; f++) {
		char *end;
		if (f == 3) {
			end = p + 1;
		} else {
			s->statf[f] = strtoul(p, &end, 10);
		}
		p = end;
		while (*p == ' ')
			p++;
	}
	for (int r = 0; r < RLIM_NLIMITS; r++)
		CHECK(getrlimit(r, &s->rl[r]) == 0, "getrlimit %d", r);
	s->brk = sbrk(0);
	memcpy(s->random, (void *)getauxval(AT_RANDOM), 16);
}

static void compare(const struct snap *a, const struct snap *b)
{
	CHECK(strcmp(a->cwd, b->cwd) == 0, "cwd %s, expected %s", b->cwd, a->cwd);
	CHECK(a->cmdline_len == b->cmdline_len && memcmp(a->cmdline, b->cmdline, a->cmdline_len) == 0,
	      "/proc/self/cmdline changed (len %zd -> %zd)", a->cmdline_len, b->cmdline_len);
	CHECK(a->environ_len == b->environ_len && memcmp(a->environ_, b->environ_, a->environ_len) == 0,
	      "/proc/self/environ changed (len %zd -> %zd)", a->environ_len, b->environ_len);
	CHECK(a->auxv_len == b->auxv_len && memcmp(a->auxv, b->auxv, a->auxv_len) == 0, "/proc/self/auxv changed");
	CHECK(strcmp(a->exe, b->exe) == 0, "/proc/self/exe is %s, expected %s", b->exe, a->exe);
	for (unsigned i = 0; i < sizeof stat_fields / sizeof stat_fields[0]; i++) {
		int f = stat_fields[i];
		CHECK(a->statf[f] == b->statf[f], "/proc/self/stat %s is %#lx, expected %#lx", stat_names[i], b->statf[f],
		      a->statf[f]);
	}
	for (int r = 0; r < RLIM_NLIMITS; r++)
		CHECK(a->rl[r].rlim_cur == b->rl[r].rlim_cur && a->rl[r].rlim_max == b->rl[r].rlim_max,
		      "rlimit %d is %lu/%lu, expected %lu/%lu", r, (unsigned long)b->rl[r].rlim_cur,
		      (unsigned long)b->rl[r].rlim_max, (unsigned long)a->rl[r].rlim_cur, (unsigned long)a->rl[r].rlim_max);
	CHECK(a->brk == b->brk, "brk %p, expected %p", b->brk, a->brk);
	CHECK(memcmp(a->random, b->random, 16) == 0, "AT_RANDOM bytes changed");
}

static struct snap first, now;

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char *dir = wl_dir();
	char sub[4200];
	snprintf(sub, sizeof sub, "%s/procattrs-cwd", dir);
	CHECK(mkdir(sub, 0755) == 0 || errno == EEXIST, "mkdir %s errno %d", sub, errno);
	CHECK(chdir(sub) == 0, "chdir %s", sub);
	umask(027);
	int oom = open("/proc/self/oom_score_adj", O_WRONLY);
	CHECK(oom >= 0 && write(oom, "123", 3) == 3, "oom_score_adj: errno %d", errno);
	close(oom);
	struct rlimit rl;
	CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0, "getrlimit");
	rl.rlim_cur = 200;
	CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit NOFILE errno %d", errno);
	CHECK(prctl(PR_SET_NAME, COMM, 0, 0, 0) == 0, "PR_SET_NAME");
	CHECK(sbrk(3 * 4096) != (void *)-1, "sbrk"); /* a brk distinct from the initial one */
	pid_t pid = getpid(), tid = syscall(SYS_gettid), pgid = getpgrp(), sid = getsid(0);
	CHECK(getauxval(AT_PAGESZ) == 4096 && sysconf(_SC_PAGESIZE) == 4096, "page size");
	take(&first);
	CHECK(strcmp(first.cwd, sub) == 0 || strstr(first.cwd, "procattrs-cwd"), "cwd %s", first.cwd);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		take(&now);
		compare(&first, &now);
		char oomv[32] = "";
		CHECK(read_file("/proc/self/oom_score_adj", oomv, sizeof(oomv)) > 0 && atoi(oomv) == 123, "oom_score_adj %s", oomv);
		mode_t m = umask(027);
		CHECK(m == 027, "umask %03o, expected 027", m);
		char st[4096];
		ssize_t n = read_file("/proc/self/status", st, sizeof st - 1);
		CHECK(n > 0, "read status");
		st[n] = 0;
		CHECK(strstr(st, "\nUmask:\t0027\n") != NULL, "/proc/self/status Umask is not 0027");
		char comm[32] = { 0 };
		CHECK(prctl(PR_GET_NAME, comm, 0, 0, 0) == 0 && strcmp(comm, COMM) == 0, "comm is '%s'", comm);
		n = read_file("/proc/self/comm", comm, sizeof comm - 1);
		comm[n > 0 ? n : 0] = 0;
		CHECK(strcmp(comm, COMM "\n") == 0, "/proc/self/comm is '%s'", comm);
		CHECK(getauxval(AT_PAGESZ) == 4096, "AT_PAGESZ");
		CHECK(getpid() == pid && syscall(SYS_gettid) == tid, "pid/tid changed");
		CHECK(getpgrp() == pgid, "process group %d, expected %d", getpgrp(), pgid);
		CHECK(getsid(0) == sid, "session %d, expected %d", getsid(0), sid);
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(10);
	}
}
