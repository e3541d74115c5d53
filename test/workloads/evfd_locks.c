/* File locks: flock(LOCK_EX) on "f", POSIX write lock on bytes 10-19 and
 * read lock from 100 to EOF of "g", OFD write lock on all of "h". Every
 * 5th pass a forked child checks from outside that each lock is held
 * (and that byte 50 of "g" is free). Logs "OK <pass>". */
#include "common.h"
#include <sys/file.h>
#include <sys/wait.h>

static char pf[4200], pg[4200], ph[4200];

static int probe(pid_t parent)
{
	int f = open(pf, O_RDWR), g = open(pg, O_RDWR), h = open(ph, O_RDWR);
	if (f < 0 || g < 0 || h < 0)
		return 10;
	if (flock(f, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		return 11;
	struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10 };
	if (fcntl(g, F_GETLK, &l) != 0 || l.l_type != F_WRLCK || l.l_pid != parent || l.l_start != 10 || l.l_len != 10)
		return 12;
	struct flock r = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 5000, .l_len = 1 };
	if (fcntl(g, F_GETLK, &r) != 0 || r.l_type != F_RDLCK || r.l_start != 100 || r.l_len != 0)
		return 13;
	struct flock rd = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 5000, .l_len = 1 };
	if (fcntl(g, F_GETLK, &rd) != 0 || rd.l_type != F_UNLCK)
		return 14;
	struct flock free50 = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 1 };
	if (fcntl(g, F_GETLK, &free50) != 0 || free50.l_type != F_UNLCK)
		return 15;
	struct flock o = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1 };
	if (fcntl(h, F_OFD_GETLK, &o) != 0 || o.l_type != F_WRLCK)
		return 16;
	return 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char *d = wl_dir();
	snprintf(pf, sizeof pf, "%s/lock-f", d);
	snprintf(pg, sizeof pg, "%s/lock-g", d);
	snprintf(ph, sizeof ph, "%s/lock-h", d);
	int f = open(pf, O_RDWR | O_CREAT, 0644), g = open(pg, O_RDWR | O_CREAT, 0644), h = open(ph, O_RDWR | O_CREAT, 0644);
	CHECK(f >= 0 && g >= 0 && h >= 0, "open");
	CHECK(flock(f, LOCK_EX) == 0, "flock");
	struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10 };
	CHECK(fcntl(g, F_SETLK, &l) == 0, "posix lock");
	struct flock r = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 0 };
	CHECK(fcntl(g, F_SETLK, &r) == 0, "posix read lock");
	struct flock o = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	CHECK(fcntl(h, F_OFD_SETLK, &o) == 0, "ofd lock errno %d", errno);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		if (pass % 5 == 0) {
			pid_t me = getpid(), c = fork();
			CHECK(c >= 0, "fork");
			if (c == 0)
				_exit(probe(me));
			int st;
			CHECK(waitpid(c, &st, 0) == c, "waitpid errno %d", errno);
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "lock probe failed with %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		}
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(10);
	}
}
