/* Shared anonymous memory between a parent and its child: the child bumps
 * a counter in a MAP_SHARED|MAP_ANONYMOUS page, the parent must see every
 * increment (before and after restore), and both keep the page at the same
 * address. */
#include "common.h"
#include <signal.h>
#include <sys/mman.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	volatile uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(shared != MAP_FAILED, "mmap");
	shared[0] = 0; /* child's counter */
	shared[1] = 0; /* parent's echo */
	pid_t c = fork();
	if (c == 0) {
		for (;;) {
			/* advance only once the parent has seen the last value */
			if (shared[1] == shared[0])
				shared[0] = shared[0] + 1;
			sleep_ms(2);
		}
	}
	wl_log("READY");
	uint64_t last = 0;
	for (uint64_t i = 1;; i++) {
		uint64_t t0 = mono_ns();
		while (shared[0] == last) {
			CHECK(mono_ns() - t0 < 2000000000ull, "child's writes are not visible (shared memory not shared?) at %lu", (unsigned long)last);
			sleep_ms(1);
		}
		CHECK(shared[0] == last + 1, "counter jumped from %lu to %lu", (unsigned long)last, (unsigned long)shared[0]);
		last = shared[0];
		shared[1] = last;
		CHECK(kill(c, 0) == 0, "child gone");
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(5);
	}
}
