/* Processes (not threads) sharing one descriptor table: clone(CLONE_FILES).
 * R (the root) clones B1 and B2 with CLONE_FILES, then unshares its own
 * table, so B1 and B2 share a table R does not have (a restore must fork
 * one from the other with CLONE_PARENT); then R clones A with CLONE_FILES
 * (A shares R's new table).
 * Each pass R opens /dev/null and has A check, over a pipe, that this
 * descriptor exists for it and close it; R then checks it is closed for
 * itself too. B1 does the same with B2 at R's request. And the tables stay
 * apart: a descriptor R puts at 900 must not exist for B1, and every
 * process checks getppid() is R.
 * R logs "OK <n>" per pass; any process logs FAIL on a mismatch. */
#include "common.h"
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>

#define APART_FD 900

static char stk_a[65536], stk_b1[65536], stk_b2[65536];
static int r2a[2], a2r[2], r2b[2], b2r[2], b12b2[2], b22b1[2];
static pid_t root;

static int get(int fd, int *v)
{
	ssize_t n;
	do
		n = read(fd, v, sizeof *v);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		_exit(0); /* the other end is gone */
	CHECK(n == sizeof *v, "pipe read %zd errno %d", n, errno);
	return *v;
}

static void put(int fd, int v)
{
	CHECK(write(fd, &v, sizeof v) == sizeof v, "pipe write errno %d", errno);
}

/* Ask the sharer behind (out, in) to check and close a descriptor opened
 * here; then it must be closed here as well. */
static void drive(const char *who, int out, int in)
{
	int fd = open("/dev/null", O_RDONLY);
	CHECK(fd >= 0, "%s: open /dev/null errno %d", who, errno);
	put(out, fd);
	int ok;
	get(in, &ok);
	errno = 0;
	CHECK(fcntl(fd, F_GETFD) == -1 && errno == EBADF, "%s: fd %d, closed by the process sharing the table, is still open here", who, fd);
}

/* The other side: the descriptor must exist here, then close it. */
static void serve(const char *who, int in, int out)
{
	int fd;
	for (;;) {
		get(in, &fd);
		CHECK(getppid() == root, "%s: parent %d, expected %d", who, getppid(), root);
		CHECK(fcntl(fd, F_GETFD) != -1, "%s: fd %d opened by the process sharing the table is not open here (errno %d)", who, fd, errno);
		CHECK(close(fd) == 0, "%s: close %d errno %d", who, fd, errno);
		put(out, 1);
	}
}

static int child_a(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* no orphan when the test kills R */
	serve("A", r2a[0], a2r[1]);
	return 0;
}

static int child_b2(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	serve("B2", b12b2[0], b22b1[1]);
	return 0;
}

/* B1: at each request of R, one check with B2, and R's descriptor at
 * APART_FD must not be in this table. */
static int child_b1(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	int req;
	for (;;) {
		get(r2b[0], &req);
		CHECK(getppid() == root, "B1: parent %d, expected %d", getppid(), root);
		errno = 0;
		CHECK(fcntl(APART_FD, F_GETFD) == -1 && errno == EBADF, "B1: fd %d of R's own table is open here: the tables are one", APART_FD);
		drive("B1", b12b2[1], b22b1[0]);
		put(b2r[1], 1);
	}
	return 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	root = getpid();
	int *ps[] = { r2a, a2r, r2b, b2r, b12b2, b22b1 };
	for (unsigned i = 0; i < sizeof ps / sizeof ps[0]; i++)
		CHECK(pipe(ps[i]) == 0, "pipe");
	pid_t b1 = clone(child_b1, stk_b1 + sizeof stk_b1, CLONE_FILES | SIGCHLD, NULL);
	CHECK(b1 > 0, "clone B1 errno %d", errno);
	pid_t b2 = clone(child_b2, stk_b2 + sizeof stk_b2, CLONE_FILES | SIGCHLD, NULL);
	CHECK(b2 > 0, "clone B2 errno %d", errno);
	CHECK(unshare(CLONE_FILES) == 0, "unshare errno %d", errno);
	pid_t a = clone(child_a, stk_a + sizeof stk_a, CLONE_FILES | SIGCHLD, NULL);
	CHECK(a > 0, "clone A errno %d", errno);
	wl_log("SHARE A %d B1 %d B2 %d", a, b1, b2);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		drive("R", r2a[1], a2r[0]);
		CHECK(dup2(r2a[1], APART_FD) == APART_FD, "dup2 errno %d", errno);
		put(r2b[1], 1);
		int ok;
		get(b2r[0], &ok);
		CHECK(close(APART_FD) == 0, "close %d", APART_FD);
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
