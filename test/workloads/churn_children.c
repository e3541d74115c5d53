/* Short-lived children coming and going, as under a shell or a supervisor:
 * the tree changes during pre-copy and at the freeze.
 *
 * Every 2 ms the parent forks a child. A child sleeps 0-7 ms, checks a
 * 64 KiB buffer it inherited (its contents are the parent's at the fork,
 * so a child made during pre-copy must arrive with its own memory), and
 * exits with status (index & 0x3f), or 99 if the buffer was wrong. Every
 * fourth child forks a grandchild of its own that exits at once and reaps
 * it. The parent reaps with waitpid(WNOHANG) only every 3rd tick, so
 * zombies are often there at the freeze, and checks each reaped pid is one
 * of its children with the status it should have; a child not reaped
 * within 3 s, an unknown pid or ECHILD while children are out is a FAIL.
 * One long-lived child checks its parent stays the same. Logs
 * "OK <n> reaped=<children reaped>" every 50 ticks. */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

#define OUT 64
#define BUF (64 << 10)

static struct {
	pid_t pid;
	int index;
	uint64_t born_ns;
} out[OUT];

static unsigned char *buf;

static void fill(uint64_t seed)
{
	for (size_t i = 0; i < BUF; i += 8)
		*(uint64_t *)(buf + i) = mix64(seed + i);
}

static int check(uint64_t seed)
{
	for (size_t i = 0; i < BUF; i += 8)
		if (*(uint64_t *)(buf + i) != mix64(seed + i))
			return 0;
	return 1;
}

static void child(int index, uint64_t seed)
{
	sleep_ms(index % 8);
	if (index % 4 == 0) {
		pid_t g = fork();
		if (g == 0)
			_exit(5);
		int st;
		if (g < 0 || waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 5)
			_exit(98);
	}
	_exit(check(seed) ? (index & 0x3f) : 99);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	buf = malloc(BUF);
	CHECK(buf != NULL, "malloc");
	pid_t me = getpid();
	pid_t keeper = fork();
	if (keeper == 0) {
		for (;;) {
			CHECK(getppid() == me, "long-lived child: ppid %d, expected %d", getppid(), me);
			sleep_ms(10);
		}
	}
	wl_log("READY");
	uint64_t reaped = 0;
	int index = 0;
	for (uint64_t tick = 1;; tick++) {
		int slot = -1;
		for (int i = 0; i < OUT; i++)
			if (out[i].pid == 0) {
				slot = i;
				break;
			}
		if (slot >= 0) {
			index++;
			uint64_t seed = mix64(index);
			fill(seed);
			pid_t c = fork();
			CHECK(c >= 0, "fork: errno %d", errno);
			if (c == 0)
				child(index, seed);
			out[slot].pid = c;
			out[slot].index = index;
			out[slot].born_ns = mono_ns();
		}
		if (tick % 3 == 0) {
			for (;;) {
				int st;
				pid_t r = waitpid(-1, &st, WNOHANG);
				if (r == 0)
					break;
				CHECK(r > 0, "waitpid: errno %d with children out", errno);
				if (r == keeper)
					FAIL("the long-lived child %d ended (status %#x)", r, st);
				int k;
				for (k = 0; k < OUT && out[k].pid != r; k++)
					;
				CHECK(k < OUT, "waitpid returned %d, not a child of ours", r);
				CHECK(WIFEXITED(st) && WEXITSTATUS(st) == (out[k].index & 0x3f),
				      "child %d (#%d) ended with status %#x, expected exit %d", r, out[k].index, st, out[k].index & 0x3f);
				out[k].pid = 0;
				reaped++;
			}
		}
		uint64_t now = mono_ns();
		for (int i = 0; i < OUT; i++)
			CHECK(out[i].pid == 0 || now - out[i].born_ns < 3000000000ull, "child %d (#%d) not reaped after 3 s", out[i].pid, out[i].index);
		CHECK(kill(keeper, 0) == 0, "the long-lived child is gone");
		if (tick % 50 == 0)
			wl_log("OK %lu reaped=%lu", (unsigned long)(tick / 50), (unsigned long)reaped);
		sleep_ms(2);
	}
}
