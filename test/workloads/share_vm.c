/* Two processes sharing one address space without being threads:
 * clone(CLONE_VM | SIGCHLD), not vfork (the parent runs on). The child
 * counts in memory both see; R checks every pass that the count moves.
 * phaul refuses this tree (one address space for two processes is not
 * made again). R logs "OK <n>" per pass, FAIL on a mismatch. */
#include "common.h"
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>

static char stk[65536];
static volatile uint64_t counter;

static int child(void *arg)
{
	(void)arg;
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* no orphan when the test kills R */
	for (;;) {
		counter++;
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
	return 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(clone(child, stk + sizeof stk, CLONE_VM | SIGCHLD, NULL) > 0, "clone errno %d", errno);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		uint64_t before = counter;
		/* up to 3 s: on a busy host the child may wait long for a CPU */
		for (int waited = 0; counter == before; waited += 10) {
			CHECK(waited < 3000, "the CLONE_VM child's count stays at %lu: the address space is no longer shared", (unsigned long)before);
			sleep_ms(10);
		}
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
