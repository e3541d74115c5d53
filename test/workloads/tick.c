/* Downtime probe: takes a CLOCK_MONOTONIC timestamp every 1 ms and tracks the
 * gap between consecutive ticks.  A gap above the threshold (argv[2] us,
 * default 10000) is logged as "GAP <us>"; after a dump/restore the largest
 * GAP line is the downtime seen by the process.  Logs "OK <n> max_gap_us=<g>"
 * every 10 ticks; FAILs if the clock goes backwards. */
#include "common.h"

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	uint64_t threshold_us = argc > 2 ? strtoull(argv[2], NULL, 0) : 10000;
	volatile uint64_t last = mono_ns(), max_gap = 0;
	wl_log("READY");
	for (uint64_t tick = 1, n = 0;; tick++) {
		struct timespec ts = { 0, 1000000L };
		while (nanosleep(&ts, &ts) != 0)
			CHECK(errno == EINTR, "nanosleep errno %d", errno);
		uint64_t now = mono_ns();
		CHECK(now >= last, "monotonic clock went backwards by %lu ns", (unsigned long)(last - now));
		uint64_t gap_us = (now - last) / 1000;
		last = now;
		if (gap_us > max_gap)
			max_gap = gap_us;
		if (gap_us > threshold_us)
			wl_log("GAP %lu", (unsigned long)gap_us);
		if (tick % 10 == 0)
			wl_log("OK %lu max_gap_us=%lu", (unsigned long)++n, (unsigned long)max_gap);
	}
}
