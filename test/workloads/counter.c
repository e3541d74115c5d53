/* The demo workload: a plain counter.  Logs "OK <n>" every 10 ms and
 * prints n on stdout.  A shadow copy of the counter is checked each step. */
#include "common.h"

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	setvbuf(stdout, NULL, _IOLBF, 0);
	volatile uint64_t counter = 0, shadow = mix64(0);
	wl_log("READY");
	for (;;) {
		CHECK(shadow == mix64(counter), "shadow mismatch at %lu", (unsigned long)counter);
		counter++;
		shadow = mix64(counter);
		printf("%lu\n", (unsigned long)counter);
		wl_log("OK %lu", (unsigned long)counter);
		sleep_ms(10);
	}
}
