/* Pipes to a process outside the tree, as when a supervisor or a shell
 * pipeline reads a program's output (`prog | logger`).
 *
 * The process makes two pipes and a double-forked helper (reparented
 * away: not in the migrated tree). Every 2 ms it writes the next counter
 * value into the first pipe and reads the helper's echo of the previous
 * one from the second. The helper checks each value it reads is the last
 * plus one, writes it back, and logs "PIPE_OK <n>" every 100 values; it
 * exits when the pipe ends (the process is gone). Migrated on one host,
 * both ends must stay connected to the helper, nothing lost or repeated.
 * The process logs "OK <n>" every 100 values. */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

static void helper(int in, int out)
{
	uint64_t v, last = 0;
	for (;;) {
		ssize_t n = read(in, &v, sizeof v);
		if (n == 0 || (n < 0 && errno != EINTR))
			_exit(0);
		if (n < 0)
			continue;
		CHECK(n == sizeof v, "helper: short read %zd", n);
		CHECK(v == last + 1, "helper: read %lu after %lu (lost or repeated)", (unsigned long)v, (unsigned long)last);
		last = v;
		if (write(out, &v, sizeof v) != sizeof v)
			_exit(0);
		if (v % 100 == 0)
			wl_log("PIPE_OK %lu", (unsigned long)(v / 100));
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	int to[2], back[2];
	CHECK(pipe(to) == 0 && pipe(back) == 0, "pipe: errno %d", errno);
	pid_t c = fork();
	CHECK(c >= 0, "fork");
	if (c == 0) {
		if (fork() == 0) {
			close(to[1]);
			close(back[0]);
			helper(to[0], back[1]);
		}
		_exit(0);
	}
	CHECK(waitpid(c, NULL, 0) == c, "waitpid");
	close(to[0]);
	close(back[1]);
	wl_log("READY");
	for (uint64_t v = 1;; v++) {
		CHECK(write(to[1], &v, sizeof v) == sizeof v, "write %lu: errno %d", (unsigned long)v, errno);
		uint64_t e;
		ssize_t n;
		do
			n = read(back[0], &e, sizeof e);
		while (n < 0 && errno == EINTR);
		CHECK(n == sizeof e && e == v, "echo of %lu: read %zd, got %lu", (unsigned long)v, n, (unsigned long)e);
		if (v % 100 == 0)
			wl_log("OK %lu", (unsigned long)(v / 100));
		sleep_ms(2);
	}
}
