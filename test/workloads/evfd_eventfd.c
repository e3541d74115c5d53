/* eventfd: counter above 2^32 (O_NONBLOCK) and an EFD_SEMAPHORE one
 * (blocking). Every pass (10 ms) reads the counters back and re-arms them
 * with the expected value, and checks the flags. Logs "OK <pass>". */
#include "common.h"
#include <sys/eventfd.h>

static int fdinfo_has(int fd, const char *want)
{
	char p[64], buf[4096];
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
	ssize_t n = read_file(p, buf, sizeof buf - 1);
	if (n < 0)
		return 0;
	buf[n] = 0;
	return strstr(buf, want) != NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int big = eventfd(0, EFD_NONBLOCK);
	int sem = eventfd(3, EFD_SEMAPHORE);
	CHECK(big >= 0 && sem >= 0, "eventfd errno %d", errno);
	uint64_t expect = 0x100000005ull, v;
	CHECK(write(big, &expect, 8) == 8, "write");
	int sem_has_flag = fdinfo_has(sem, "eventfd-semaphore: 1");
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		CHECK(read(big, &v, 8) == 8, "read big errno %d", errno);
		CHECK(v == expect, "big counter %#llx, expected %#llx", (unsigned long long)v, (unsigned long long)expect);
		CHECK(read(big, &v, 8) < 0 && errno == EAGAIN, "big counter not empty after read (errno %d)", errno);
		expect += pass;
		CHECK(write(big, &expect, 8) == 8, "write big");
		/* semaphore: three reads of 1, then put three back */
		for (int i = 0; i < 3; i++) {
			CHECK(read(sem, &v, 8) == 8, "read sem errno %d", errno);
			CHECK(v == 1, "semaphore read %llu", (unsigned long long)v);
		}
		v = 3;
		CHECK(write(sem, &v, 8) == 8, "write sem");
		CHECK((fcntl(big, F_GETFL) & O_NONBLOCK) != 0, "big lost O_NONBLOCK");
		CHECK((fcntl(sem, F_GETFL) & O_NONBLOCK) == 0, "sem has O_NONBLOCK");
		CHECK(fcntl(big, F_GETFD) == 0 && fcntl(sem, F_GETFD) == 0, "FD_CLOEXEC changed");
		if (sem_has_flag)
			CHECK(fdinfo_has(sem, "eventfd-semaphore: 1"), "sem lost EFD_SEMAPHORE");
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(10);
	}
}
