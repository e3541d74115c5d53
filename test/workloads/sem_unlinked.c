/* Files removed while mapped, with no descriptor left: what sem_open leaves
 * behind (a /dev/shm file, created, mapped, closed and unlinked; Python's
 * multiprocessing locks and queues are made this way), a file of the
 * workload's directory treated the same way by hand, and a memfd mapped
 * and closed. A child shares all three. Every pass the parent posts "req",
 * the child bumps a counter in the hand made mapping and one in the memfd
 * and posts "ack"; the parent waits for it (2 s at most) and checks both
 * counters and both patterns. Logs "OK <pass>". */
#include "common.h"
#include <semaphore.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define LEN 16384

static sem_t *named(const char *what)
{
	char name[64];
	snprintf(name, sizeof name, "/phaul-%s-%d", what, (int)getpid());
	sem_t *s = sem_open(name, O_CREAT | O_EXCL, 0600, 0);
	CHECK(s != SEM_FAILED, "sem_open %s", name);
	CHECK(sem_unlink(name) == 0, "sem_unlink %s", name);
	return s;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	sem_t *req = named("req"), *ack = named("ack");
	char path[4200];
	snprintf(path, sizeof path, "%s/mapped-only", wl_dir());
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	CHECK(fd >= 0, "open");
	static uint8_t want[LEN];
	for (int i = 0; i < LEN; i++)
		want[i] = (uint8_t)mix64(i + 11);
	CHECK(write(fd, want, LEN) == LEN, "write");
	uint8_t *map = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(map != MAP_FAILED, "mmap");
	close(fd);
	CHECK(unlink(path) == 0, "unlink");
	volatile uint64_t *counter = (volatile uint64_t *)(map + LEN - 8);
	*counter = 0;
	int mfd = (int)syscall(SYS_memfd_create, "phaul-mapped", 0);
	CHECK(mfd >= 0, "memfd_create");
	CHECK(ftruncate(mfd, LEN) == 0, "ftruncate");
	uint8_t *mem = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	CHECK(mem != MAP_FAILED, "mmap memfd");
	close(mfd);
	memcpy(mem, want, LEN - 8);
	volatile uint64_t *mcounter = (volatile uint64_t *)(mem + LEN - 8);
	*mcounter = 0;
	pid_t child = fork();
	CHECK(child >= 0, "fork");
	if (child == 0) {
		for (;;) {
			if (sem_wait(req) != 0)
				continue;
			(*counter)++;
			(*mcounter)++;
			sem_post(ack);
		}
	}
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		CHECK(sem_post(req) == 0, "sem_post");
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 2;
		int r;
		while ((r = sem_timedwait(ack, &until)) != 0 && errno == EINTR)
			;
		CHECK(r == 0, "no answer from the child through the semaphores (errno %d)", errno);
		CHECK(*counter == pass, "counter %llu, want %llu", (unsigned long long)*counter, (unsigned long long)pass);
		CHECK(*mcounter == pass, "memfd counter %llu, want %llu", (unsigned long long)*mcounter, (unsigned long long)pass);
		CHECK(memcmp(map, want, LEN - 8) == 0, "the mapped file's contents changed");
		CHECK(memcmp(mem, want, LEN - 8) == 0, "the memfd's contents changed");
		int st;
		CHECK(waitpid(child, &st, WNOHANG) == 0, "the child is gone");
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(5);
	}
}
