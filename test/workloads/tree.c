/* A process tree: parent P forks children A and B, A forks grandchild G.
 * A token travels round the ring P -> A -> G -> B -> P through four pipes,
 * incremented at each hop; every process checks the token it receives is
 * exactly 4 more than the previous one, that getppid() is still its real
 * parent, and (P and A) that waitpid(WNOHANG) still sees live children.
 * P logs "OK <round>" after each round trip (every ~10 ms) and
 * "TREE <P> <A> <G> <B>" once at start.  Children exit quietly on EOF or
 * EPIPE (so killing P tears the tree down) and log FAIL on any mismatch. */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

static int pipes[4][2]; /* 0: P->A, 1: A->G, 2: G->B, 3: B->P */

static void keep_only(int in, int out)
{
	for (int i = 0; i < 4; i++) {
		if (i != in)
			close(pipes[i][0]);
		if (i != out)
			close(pipes[i][1]);
	}
}

static int get_token(int fd, uint64_t *v)
{
	ssize_t n;
	do
		n = read(fd, v, sizeof *v);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return 0;
	CHECK(n == sizeof *v, "token read %zd errno %d", n, errno);
	return 1;
}

static int put_token(int fd, uint64_t v)
{
	ssize_t n = write(fd, &v, sizeof v);
	if (n < 0 && errno == EPIPE)
		return 0;
	CHECK(n == sizeof v, "token write %zd errno %d", n, errno);
	return 1;
}

static void check_children(const char *who)
{
	int st;
	pid_t r = waitpid(-1, &st, WNOHANG);
	CHECK(r == 0, "%s: waitpid returned %d (errno %d, status %#x): a child is gone or not ours", who, r, errno, st);
}

/* relay loop of a child: in -> +1 -> out */
static void relay(const char *name, pid_t parent, int in, int out, int has_child)
{
	uint64_t v, last = 0;
	int first = 1;
	while (get_token(in, &v)) {
		CHECK(getppid() == parent, "%s: ppid %d, expected %d", name, getppid(), parent);
		CHECK(first || v == last + 4, "%s: token %lu after %lu", name, (unsigned long)v, (unsigned long)last);
		if (has_child)
			check_children(name);
		first = 0;
		last = v;
		if (!put_token(out, v + 1))
			break;
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < 4; i++)
		CHECK(pipe(pipes[i]) == 0, "pipe");
	pid_t P = getpid();
	int sync_pipe[2];
	CHECK(pipe(sync_pipe) == 0, "pipe");

	pid_t A = fork();
	CHECK(A >= 0, "fork A");
	if (A == 0) {
		pid_t me = getpid();
		pid_t G = fork();
		CHECK(G >= 0, "fork G");
		if (G == 0) {
			close(sync_pipe[0]);
			close(sync_pipe[1]);
			keep_only(1, 2);
			relay("G", me, pipes[1][0], pipes[2][1], 0);
		}
		close(sync_pipe[0]);
		CHECK(write(sync_pipe[1], &G, sizeof G) == sizeof G, "sync write");
		close(sync_pipe[1]);
		keep_only(0, 1);
		relay("A", P, pipes[0][0], pipes[1][1], 1);
	}
	pid_t B = fork();
	CHECK(B >= 0, "fork B");
	if (B == 0) {
		close(sync_pipe[0]);
		close(sync_pipe[1]);
		keep_only(2, 3);
		relay("B", P, pipes[2][0], pipes[3][1], 0);
	}
	close(sync_pipe[1]);
	pid_t G;
	CHECK(read(sync_pipe[0], &G, sizeof G) == sizeof G, "sync read");
	close(sync_pipe[0]);
	keep_only(3, 0);
	wl_log("TREE %d %d %d %d", P, A, G, B);
	wl_log("READY");
	uint64_t token = 1;
	for (uint64_t round = 1;; round++) {
		CHECK(put_token(pipes[0][1], token), "P: ring broken (write)");
		uint64_t v;
		CHECK(get_token(pipes[3][0], &v), "P: ring broken (EOF)");
		CHECK(v == token + 3, "P: token %lu came back, expected %lu", (unsigned long)v, (unsigned long)(token + 3));
		check_children("P");
		token = v + 1;
		wl_log("OK %lu", (unsigned long)round);
		sleep_ms(10);
	}
}
