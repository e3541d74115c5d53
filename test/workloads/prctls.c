/* prctl settings: not dumpable, a child subreaper, a parent-death signal,
 * a timer slack and THP disabled; each pass checks all of them. */
#include "common.h"
#include <signal.h>
#include <sys/prctl.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper");
	CHECK(prctl(PR_SET_PDEATHSIG, SIGUSR1) == 0, "pdeathsig");
	CHECK(prctl(PR_SET_TIMERSLACK, 123456) == 0, "timerslack");
	CHECK(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, "thp_disable");
	CHECK(prctl(PR_SET_DUMPABLE, 0) == 0, "dumpable");
	signal(SIGUSR1, SIG_IGN);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		int v = -1;
		CHECK(prctl(PR_GET_CHILD_SUBREAPER, &v) == 0 && v == 1, "subreaper %d", v);
		v = -1;
		CHECK(prctl(PR_GET_PDEATHSIG, &v) == 0 && v == SIGUSR1, "pdeathsig %d", v);
		CHECK(prctl(PR_GET_TIMERSLACK) == 123456, "timerslack %d", prctl(PR_GET_TIMERSLACK));
		CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "thp_disable");
		CHECK(prctl(PR_GET_DUMPABLE) == 0, "dumpable %d", prctl(PR_GET_DUMPABLE));
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
