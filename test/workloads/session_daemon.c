/* A session leader that left a daemon behind in its session: the daemon
 * (a grandchild, orphaned at once, so not part of the leader's tree) keeps
 * the leader's pid taken as a session and group id after the leader is
 * dumped and gone, although no process has that pid. */
#include "common.h"
#include <sys/wait.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(getsid(0) == getpid(), "not a session leader");
	int p[2];
	CHECK(pipe(p) == 0, "pipe");
	pid_t c = fork();
	CHECK(c >= 0, "fork");
	if (c == 0) {
		pid_t d = fork();
		if (d == 0) {
			for (;;)
				sleep_ms(100);
		}
		CHECK(write(p[1], &d, sizeof d) == sizeof d, "write");
		_exit(0);
	}
	pid_t d;
	CHECK(read(p[0], &d, sizeof d) == sizeof d, "read");
	CHECK(waitpid(c, NULL, 0) == c, "waitpid");
	close(p[0]);
	close(p[1]);
	wl_log("DAEMON %d", d);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		wl_log("OK %llu", (unsigned long long)i);
		sleep_ms(10);
	}
}
