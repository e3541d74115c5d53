/* A process that uses every descriptor number its limit allows: hard and
 * soft RLIMIT_NOFILE at 512, numbers 0-511 all open (the log, /dev/null
 * everywhere else, a pipe at 510-511 carrying a byte each pass). The
 * restore has no number above the process's own to park or move
 * descriptors in. Each pass checks every number is open and refers to what
 * it should, and logs "OK <n>". */
#include "common.h"
#include <sys/resource.h>
#include <sys/stat.h>

#define LIMIT 512

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct rlimit r = { LIMIT, LIMIT };
	CHECK(setrlimit(RLIMIT_NOFILE, &r) == 0, "setrlimit errno %d", errno);
	int null = open("/dev/null", O_RDWR);
	CHECK(null >= 0, "open /dev/null errno %d", errno);
	int p[2];
	CHECK(pipe(p) == 0, "pipe errno %d", errno);
	CHECK(dup2(p[0], LIMIT - 2) == LIMIT - 2 && dup2(p[1], LIMIT - 1) == LIMIT - 1, "dup2 pipe errno %d", errno);
	if (p[0] != LIMIT - 2)
		close(p[0]);
	if (p[1] != LIMIT - 1)
		close(p[1]);
	/* (whatever the launcher left open is replaced too) */
	for (int fd = 0; fd < LIMIT - 2; fd++)
		if (fd != log_fd && fd != null)
			CHECK(dup2(null, fd) == fd, "dup2 %d errno %d", fd, errno);
	struct stat ns;
	CHECK(fstat(null, &ns) == 0, "fstat");
	CHECK(open("/dev/null", O_RDONLY) < 0 && errno == EMFILE, "a descriptor number is still free");
	wl_log("READY");
	for (uint64_t n = 1;; n++) {
		for (int fd = 0; fd < LIMIT - 2; fd++) {
			if (fd == log_fd)
				continue;
			struct stat st;
			CHECK(fstat(fd, &st) == 0 && st.st_rdev == ns.st_rdev && S_ISCHR(st.st_mode), "fd %d is not /dev/null (errno %d)", fd, errno);
		}
		char b = (char)n, got = 0;
		CHECK(write(LIMIT - 1, &b, 1) == 1 && read(LIMIT - 2, &got, 1) == 1 && got == b, "the pipe at %d-%d lost its byte", LIMIT - 2, LIMIT - 1);
		CHECK(getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur == LIMIT && r.rlim_max == LIMIT, "RLIMIT_NOFILE is %lu/%lu", (unsigned long)r.rlim_cur, (unsigned long)r.rlim_max);
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(50);
	}
}
