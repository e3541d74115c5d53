/* POSIX timers: timer 0 periodic 20 ms (CLOCK_MONOTONIC, SIGRTMIN with a
 * sigev_value), timer 1 deleted (a gap in the ids), timer 2 SIGEV_NONE one
 * hour away (CLOCK_REALTIME), timer 3 unarmed (CLOCK_BOOTTIME). Every pass
 * checks values, intervals and ids, and that ticks keep arriving.
 * Logs "OK <pass>". */
#include "common.h"
#include <signal.h>

static volatile int ticks, badval;

static void on_tick(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (si->si_value.sival_ptr != (void *)0xabcdef)
		badval++;
	ticks++;
}

static uint64_t ts_ns(struct timespec t) { return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec; }

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct sigaction sa = { 0 };
	sa.sa_sigaction = on_tick;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGRTMIN, &sa, NULL);
	timer_t t[4];
	struct sigevent se = { 0 };
	se.sigev_notify = SIGEV_SIGNAL;
	se.sigev_signo = SIGRTMIN;
	se.sigev_value.sival_ptr = (void *)0xabcdef;
	CHECK(timer_create(CLOCK_MONOTONIC, &se, &t[0]) == 0, "create 0");
	CHECK(timer_create(CLOCK_MONOTONIC, &se, &t[1]) == 0, "create 1");
	struct sigevent none = { 0 };
	none.sigev_notify = SIGEV_NONE;
	CHECK(timer_create(CLOCK_REALTIME, &none, &t[2]) == 0, "create 2");
	CHECK(timer_create(CLOCK_BOOTTIME, &none, &t[3]) == 0, "create 3");
	for (int i = 0; i < 4; i++)
		CHECK((long)t[i] == i, "timer %d has id %ld", i, (long)t[i]);
	CHECK(timer_delete(t[1]) == 0, "delete");
	struct itimerspec per = { { 0, 20000000 }, { 0, 20000000 } };
	CHECK(timer_settime(t[0], 0, &per, NULL) == 0, "settime 0");
	struct itimerspec hour = { { 0, 0 }, { 3600, 0 } };
	CHECK(timer_settime(t[2], 0, &hour, NULL) == 0, "settime 2");
	uint64_t start_rt = now_ns(CLOCK_REALTIME);
	int last_ticks = 0, stale = 0;
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		struct itimerspec g;
		CHECK(timer_gettime(t[0], &g) == 0, "gettime 0 errno %d", errno);
		CHECK(ts_ns(g.it_interval) == 20000000 && ts_ns(g.it_value) <= 20000000, "timer 0 %llu/%llu", (unsigned long long)ts_ns(g.it_value),
		      (unsigned long long)ts_ns(g.it_interval));
		CHECK(timer_gettime(t[1], &g) < 0 && errno == EINVAL, "deleted timer 1 exists");
		CHECK(timer_gettime(t[2], &g) == 0, "gettime 2");
		uint64_t left = ts_ns(g.it_value);
		int64_t drift = (int64_t)(now_ns(CLOCK_REALTIME) + left - start_rt) - 3600ll * 1000000000ll;
		CHECK(left > 0 && ts_ns(g.it_interval) == 0 && drift < 2000000000ll, "timer 2 left %llu drift %lld", (unsigned long long)left, (long long)drift);
		CHECK(timer_gettime(t[3], &g) == 0 && ts_ns(g.it_value) == 0, "timer 3");
		CHECK(!badval, "tick with wrong sigev_value");
		if (ticks == last_ticks)
			stale++;
		else
			stale = 0;
		last_ticks = ticks;
		CHECK(stale < 20, "no timer tick for 20 passes");
		wl_log("OK %llu ticks %d", (unsigned long long)pass, ticks);
		sleep_ms(10);
	}
}
