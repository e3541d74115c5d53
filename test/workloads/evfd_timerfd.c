/* timerfd: a periodic CLOCK_MONOTONIC timer (20 ms, O_NONBLOCK) read every
 * pass; a CLOCK_REALTIME one-shot an hour away (TFD_TIMER_ABSTIME); a
 * CLOCK_BOOTTIME one-shot that expired at start and is never read (must
 * stay readable); a periodic 5 ms one read every pass (>= 1 tick).
 * Checks values, intervals, clocks (fdinfo) and flags. Logs "OK <pass>". */
#include "common.h"
#include <poll.h>
#include <sys/timerfd.h>

static int clock_of(int fd)
{
	char p[64], buf[4096];
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
	ssize_t n = read_file(p, buf, sizeof buf - 1);
	CHECK(n > 0, "fdinfo");
	buf[n] = 0;
	char *c = strstr(buf, "clockid:");
	CHECK(c != NULL, "no clockid in fdinfo");
	return atoi(c + 8);
}

static uint64_t ts_ns(struct timespec t) { return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec; }

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int per = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int abs_rt = timerfd_create(CLOCK_REALTIME, 0);
	int fired = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK);
	int fast = timerfd_create(CLOCK_MONOTONIC, 0);
	CHECK(per >= 0 && abs_rt >= 0 && fired >= 0 && fast >= 0, "timerfd_create errno %d", errno);
	struct itimerspec it = { { 0, 20000000 }, { 0, 20000000 } };
	CHECK(timerfd_settime(per, 0, &it, NULL) == 0, "settime per");
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	uint64_t rt_deadline = ts_ns(now) + 3600ull * 1000000000ull;
	struct itimerspec ia = { { 0, 0 }, { rt_deadline / 1000000000ull, rt_deadline % 1000000000ull } };
	CHECK(timerfd_settime(abs_rt, TFD_TIMER_ABSTIME, &ia, NULL) == 0, "settime abs");
	struct itimerspec i1 = { { 0, 0 }, { 0, 1000 } };
	CHECK(timerfd_settime(fired, 0, &i1, NULL) == 0, "settime fired");
	struct itimerspec i5 = { { 0, 5000000 }, { 0, 5000000 } };
	CHECK(timerfd_settime(fast, 0, &i5, NULL) == 0, "settime fast");
	sleep_ms(2);
	uint64_t total = 0, v;
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		ssize_t n = read(per, &v, 8);
		if (n == 8)
			total += v;
		else
			CHECK(errno == EAGAIN, "read per errno %d", errno);
		struct itimerspec g;
		CHECK(timerfd_gettime(per, &g) == 0, "gettime per");
		CHECK(g.it_interval.tv_sec == 0 && g.it_interval.tv_nsec == 20000000, "per interval %ld.%09ld", (long)g.it_interval.tv_sec, g.it_interval.tv_nsec);
		CHECK(ts_ns(g.it_value) > 0 && ts_ns(g.it_value) <= 20000000, "per value %llu", (unsigned long long)ts_ns(g.it_value));
		CHECK(timerfd_gettime(abs_rt, &g) == 0, "gettime abs");
		clock_gettime(CLOCK_REALTIME, &now);
		uint64_t left = ts_ns(g.it_value);
		CHECK(g.it_interval.tv_sec == 0 && g.it_interval.tv_nsec == 0, "abs interval");
		CHECK(left > 0 && left <= 3600ull * 1000000000ull, "abs left %llu", (unsigned long long)left);
		int64_t drift = (int64_t)(ts_ns(now) + left) - (int64_t)rt_deadline;
		CHECK(drift < 50000000 && drift > -50000000, "abs deadline moved by %lld ns", (long long)drift);
		struct pollfd pf = { fired, POLLIN, 0 };
		CHECK(poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN), "expired timer not readable (unread tick lost)");
		CHECK(read(fast, &v, 8) == 8 && v >= 1, "read fast");
		CHECK((fcntl(per, F_GETFL) & O_NONBLOCK) && !(fcntl(fast, F_GETFL) & O_NONBLOCK), "flags");
		CHECK(clock_of(per) == CLOCK_MONOTONIC && clock_of(abs_rt) == CLOCK_REALTIME && clock_of(fired) == CLOCK_BOOTTIME, "clockid");
		wl_log("OK %llu ticks %llu", (unsigned long long)pass, (unsigned long long)total);
		sleep_ms(10);
	}
}
