/* Fresh-memory fill rate, for comparison with migration page throughput.
 *   fillblast [MIB]   (default 1024)
 * What a destination must do with every page it receives, without the
 * network: a child maps MIB MiB of anonymous memory it never touched and
 * waits; the parent writes into it with process_vm_writev in 256 KiB runs
 * (the destination's page frames), one thread. Prints
 * "bytes=<n> seconds=<s> mbps=<MB/s>". On a VM whose host backs guest
 * memory lazily, memory the guest has not used lately is much slower to
 * fill than memory it just freed, so the rate moves from run to run. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RUN (256 << 10)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	size_t total = (size_t)(argc > 1 ? atoll(argv[1]) : 1024) << 20;
	/* Mapped before the fork so both know the address; touched by neither. */
	char *target = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (target == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	pid_t child = fork();
	if (child < 0) {
		perror("fork");
		return 1;
	}
	if (child == 0) {
		for (;;)
			pause();
	}
	munmap(target, total);
	static char src[RUN];
	memset(src, 0x5a, sizeof src);
	double t0 = now();
	for (size_t off = 0; off < total; off += RUN) {
		struct iovec l = { src, RUN }, r = { target + off, RUN };
		if (process_vm_writev(child, &l, 1, &r, 1, 0) != RUN) {
			perror("process_vm_writev");
			kill(child, SIGKILL);
			return 1;
		}
	}
	double s = now() - t0;
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	printf("bytes=%zu seconds=%.3f mbps=%.1f\n", total, s, total / s / 1e6);
	return 0;
}
