/* Descriptors and a working directory under /proc/PID.
 * Default mode: R forks a child C, then keeps open /proc/self/status,
 * /proc/thread-self/status, /proc/C/status and the directory /proc/C, and
 * works in /proc/self, and keeps open /proc/self/fdinfo/N of a pipe end
 * opened O_NONBLOCK (it opens only while fd N exists). Each pass every one of them must still name the
 * process it was opened on: the last NSpid of each status file (the pid in
 * the process's own namespace, also after a restore into a new one) is
 * R's or C's, and the fdinfo names the pipe end (its flags, O_NONBLOCK).
 * "dead": entries of children that have since been reaped: an fd on the
 * /proc directory of one, an fd on the mountinfo of another, and the
 * working directory in the /proc directory of a third. Each pass checks
 * they are still entries of dead processes: the fds are open, their links
 * end in " (deleted)", the directory opens nothing,
 * and getcwd fails with ENOENT.
 * R logs "OK <n>" per pass, FAIL on a mismatch. */
#include "common.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* The innermost pid of the status file open at `fd` (read from offset 0). */
static long nspid_at(int fd, const char *what)
{
	char buf[4096];
	ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
	CHECK(n > 0, "%s: read errno %d", what, errno);
	buf[n] = 0;
	char *l = strstr(buf, "\nNSpid:");
	CHECK(l != NULL, "%s: no NSpid line", what);
	l += 7;
	long last = -1;
	for (char *e; *l && *l != '\n'; l = e) {
		long v = strtol(l, &e, 10);
		if (e == l)
			break;
		last = v;
	}
	return last;
}

static int open_ok(const char *path, int flags)
{
	int fd = open(path, flags);
	CHECK(fd >= 0, "open %s errno %d", path, errno);
	return fd;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int dead = argc > 2 && strcmp(argv[2], "dead") == 0;
	pid_t c = fork();
	CHECK(c >= 0, "fork");
	if (c == 0) {
		if (dead)
			_exit(0);
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* no orphan when the test kills R */
		for (;;)
			pause();
	}
	char p[64];
	snprintf(p, sizeof p, "/proc/%d", c);
	int cdir = open_ok(p, O_RDONLY | O_DIRECTORY);
	if (dead) {
		int mountinfo = -1;
		for (int k = 0; k < 2; k++) {
			pid_t d = fork();
			CHECK(d >= 0, "fork");
			if (d == 0) {
				prctl(PR_SET_PDEATHSIG, SIGKILL);
				for (;;)
					pause();
			}
			snprintf(p, sizeof p, k == 0 ? "/proc/%d/mountinfo" : "/proc/%d", d);
			if (k == 0)
				mountinfo = open_ok(p, O_RDONLY);
			else
				CHECK(chdir(p) == 0, "chdir %s errno %d", p, errno);
			kill(d, SIGKILL);
			CHECK(waitpid(d, NULL, 0) == d, "waitpid");
		}
		CHECK(waitpid(c, NULL, 0) == c, "waitpid");
		wl_log("READY");
		for (uint64_t i = 1;; i++) {
			errno = 0;
			CHECK(openat(cdir, "status", O_RDONLY) < 0, "the reaped child's /proc entry still opens");
			char b[64];
			CHECK(fcntl(mountinfo, F_GETFD) == 0, "mountinfo fd: errno %d", errno);
			CHECK(getcwd(b, sizeof b) == NULL && errno == ENOENT, "getcwd in a reaped child's /proc directory: errno %d", errno);
			for (int k = 0; k < 3; k++) {
				char l[128] = {0}, q[64];
				if (k < 2)
					snprintf(q, sizeof q, "/proc/self/fd/%d", k == 0 ? cdir : mountinfo);
				else
					snprintf(q, sizeof q, "/proc/self/cwd");
				ssize_t n = readlink(q, l, sizeof l - 1);
				struct stat st;
				/* A file's link keeps its path (only the directory's is
				 * dropped), which then leads nowhere. */
				if (k == 1)
					CHECK(n > 0 && stat(l, &st) < 0 && errno == ENOENT, "%s links to %s, which exists", q, l);
				else
					CHECK(n > 10 && strcmp(l + n - 10, " (deleted)") == 0, "%s links to %s, not a dead entry", q, l);
			}
			wl_log("OK %lu", (unsigned long)i);
			sleep_ms(20);
		}
	}
	snprintf(p, sizeof p, "/proc/%d/status", c);
	int cstatus = open_ok(p, O_RDONLY);
	int self = open_ok("/proc/self/status", O_RDONLY);
	int thread = open_ok("/proc/thread-self/status", O_RDONLY);
	int pfd[2];
	CHECK(pipe2(pfd, O_NONBLOCK) == 0, "pipe2 errno %d", errno);
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", pfd[0]);
	int info = open_ok(p, O_RDONLY);
	CHECK(chdir("/proc/self") == 0, "chdir /proc/self errno %d", errno);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		long me = getpid();
		CHECK(nspid_at(self, "/proc/self/status") == me, "/proc/self/status fd names pid %ld, not %ld", nspid_at(self, "self"), me);
		CHECK(nspid_at(thread, "/proc/thread-self/status") == me, "/proc/thread-self/status fd names pid %ld, not %ld", nspid_at(thread, "thread"), me);
		CHECK(nspid_at(cstatus, "child status") == c, "/proc/%d/status fd names pid %ld", c, nspid_at(cstatus, "child"));
		int s = openat(cdir, "status", O_RDONLY);
		CHECK(s >= 0, "openat(/proc/%d dir, status) errno %d", c, errno);
		CHECK(nspid_at(s, "child dir") == c, "/proc/%d dir fd names pid %ld", c, nspid_at(s, "child dir"));
		close(s);
		s = open("status", O_RDONLY);
		CHECK(s >= 0, "open status in the cwd /proc/self errno %d", errno);
		CHECK(nspid_at(s, "cwd status") == me, "the cwd /proc/self names pid %ld, not %ld", nspid_at(s, "cwd"), me);
		close(s);
		char ib[512];
		ssize_t n = pread(info, ib, sizeof ib - 1, 0);
		CHECK(n > 0, "fdinfo of fd %d: read errno %d", pfd[0], errno);
		ib[n] = 0;
		char *fl = strstr(ib, "flags:");
		CHECK(fl && (strtoul(fl + 6, NULL, 8) & O_NONBLOCK), "fdinfo of fd %d does not name the non-blocking pipe end: %s", pfd[0], ib);
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
