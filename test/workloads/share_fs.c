/* Processes (not threads) sharing cwd, root and umask: clone(CLONE_FS).
 * R (the root) clones B1 and B2 with CLONE_FS, then unshares its own, so
 * B1 and B2 share one R does not have (a restore must fork one from the
 * other with CLONE_PARENT); then R clones A with CLONE_FS.
 * Each pass R changes directory and umask and has A report its own, over a
 * pipe: they must be R's; then A changes them and R must see A's. B1 does
 * the same with B2 at R's request and reports its directory, which must be
 * one of B's, not R's (the two stay apart).
 * R logs "OK <n>" per pass; any process logs FAIL on a mismatch. */
#include "common.h"
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>

struct fsview {
	char cwd[1024];
	unsigned umask;
};

static char stk_a[65536], stk_b1[65536], stk_b2[65536];
static int r2a[2], a2r[2], r2b[2], b2r[2], b12b2[2], b22b1[2];
static char dirs[6][1024]; /* R's: 0 1, A's: 2, B's: 3 4 5 */

static void get(int fd, void *v, size_t len)
{
	ssize_t n;
	do
		n = read(fd, v, len);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		_exit(0); /* the other end is gone */
	CHECK(n == (ssize_t)len, "pipe read %zd errno %d", n, errno);
}

static void put(int fd, const void *v, size_t len)
{
	CHECK(write(fd, v, len) == (ssize_t)len, "pipe write errno %d", errno);
}

/* umask without changing it (another process shares it). */
static unsigned my_umask(void)
{
	char buf[4096];
	ssize_t n = read_file("/proc/thread-self/status", buf, sizeof buf - 1);
	CHECK(n > 0, "read status");
	buf[n] = 0;
	char *u = strstr(buf, "Umask:");
	CHECK(u != NULL, "no Umask in status");
	return (unsigned)strtoul(u + 6, NULL, 8);
}

static void view(struct fsview *v)
{
	memset(v, 0, sizeof *v);
	CHECK(getcwd(v->cwd, sizeof v->cwd) != NULL, "getcwd errno %d", errno);
	v->umask = my_umask();
}

/* Change cwd and umask here; the sharer must report them. Then it changes
 * them to (`theirs`, 077) and they must be so here. */
static void drive(const char *who, int out, int in, const char *mine, unsigned mask, const char *theirs)
{
	CHECK(chdir(mine) == 0, "%s: chdir %s errno %d", who, mine, errno);
	umask(mask);
	put(out, theirs, 1024);
	struct fsview v;
	get(in, &v, sizeof v);
	CHECK(strcmp(v.cwd, mine) == 0, "%s: the process sharing cwd is in %s, not %s", who, v.cwd, mine);
	CHECK(v.umask == mask, "%s: the process sharing umask has %03o, not %03o", who, v.umask, mask);
	struct fsview here;
	view(&here);
	CHECK(strcmp(here.cwd, theirs) == 0, "%s: cwd %s after the sharer went to %s", who, here.cwd, theirs);
	CHECK(here.umask == 077, "%s: umask %03o after the sharer set 077", who, here.umask);
}

static void serve(int in, int out)
{
	char next[1024];
	for (;;) {
		get(in, next, sizeof next);
		struct fsview v;
		view(&v);
		CHECK(chdir(next) == 0, "chdir %s errno %d", next, errno);
		umask(077);
		put(out, &v, sizeof v);
	}
}

static int child_a(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* no orphan when the test kills R */
	serve(r2a[0], a2r[1]);
	return 0;
}

static int child_b2(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	serve(b12b2[0], b22b1[1]);
	return 0;
}

static int child_b1(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	char req[1024];
	for (uint64_t i = 0;; i++) {
		get(r2b[0], req, sizeof req);
		drive("B1", b12b2[1], b22b1[0], dirs[3 + (i & 1)], (i & 1) ? 022 : 027, dirs[5]);
		struct fsview v;
		view(&v);
		put(b2r[1], &v, sizeof v);
	}
	return 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char *d = wl_dir();
	for (int i = 0; i < 6; i++) {
		snprintf(dirs[i], sizeof dirs[i], "%s/d%d", d, i);
		CHECK(mkdir(dirs[i], 0755) == 0 || errno == EEXIST, "mkdir %s", dirs[i]);
	}
	int *ps[] = { r2a, a2r, r2b, b2r, b12b2, b22b1 };
	for (unsigned i = 0; i < sizeof ps / sizeof ps[0]; i++)
		CHECK(pipe(ps[i]) == 0, "pipe");
	CHECK(chdir(dirs[3]) == 0, "chdir");
	CHECK(clone(child_b1, stk_b1 + sizeof stk_b1, CLONE_FS | SIGCHLD, NULL) > 0, "clone B1 errno %d", errno);
	CHECK(clone(child_b2, stk_b2 + sizeof stk_b2, CLONE_FS | SIGCHLD, NULL) > 0, "clone B2 errno %d", errno);
	CHECK(unshare(CLONE_FS) == 0, "unshare errno %d", errno);
	CHECK(chdir(dirs[0]) == 0, "chdir");
	CHECK(clone(child_a, stk_a + sizeof stk_a, CLONE_FS | SIGCHLD, NULL) > 0, "clone A errno %d", errno);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		drive("R", r2a[1], a2r[0], dirs[i & 1], (i & 1) ? 022 : 027, dirs[2]);
		char req[1024] = "";
		put(r2b[1], req, sizeof req);
		struct fsview b;
		get(b2r[0], &b, sizeof b);
		CHECK(strcmp(b.cwd, dirs[5]) == 0, "B1 is in %s, expected %s (its own cwd, apart from R's)", b.cwd, dirs[5]);
		struct fsview here;
		view(&here);
		CHECK(strcmp(here.cwd, dirs[2]) == 0, "R: cwd %s, expected %s: B1's chdir reached R", here.cwd, dirs[2]);
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
