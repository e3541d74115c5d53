/* prctl settings: not dumpable, a child subreaper, a parent-death signal,
 * a timer slack and THP disabled; membarrier registrations (private
 * expedited and its rseq flavour), an audit login uid, and memory that
 * denies write+execute (PR_SET_MDWE, set last: phaul injects code into a
 * process that has it); each pass checks all of them. */
#include "common.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/membarrier.h>

#define MB_GET_REGISTRATIONS (1 << 9)
#define MB_REGISTERED (MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)
#define LOGINUID 4242
#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif

static long membarrier(int cmd)
{
	return syscall(SYS_membarrier, cmd, 0, 0);
}

static long loginuid(void)
{
	char b[32] = {0};
	int fd = open("/proc/self/loginuid", O_RDONLY);
	CHECK(fd >= 0, "open loginuid errno %d", errno);
	CHECK(read(fd, b, sizeof b - 1) > 0, "read loginuid");
	close(fd);
	return strtol(b, NULL, 10);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper");
	CHECK(prctl(PR_SET_PDEATHSIG, SIGUSR1) == 0, "pdeathsig");
	CHECK(prctl(PR_SET_TIMERSLACK, 123456) == 0, "timerslack");
	CHECK(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, "thp_disable");
	CHECK(prctl(PR_SET_DUMPABLE, 0) == 0, "dumpable");
	CHECK(membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0, "membarrier register errno %d", errno);
	CHECK(membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ) == 0, "membarrier rseq register errno %d", errno);
	int fd = open("/proc/self/loginuid", O_WRONLY);
	CHECK(fd >= 0 && write(fd, "4242", 4) == 4, "set loginuid errno %d", errno);
	close(fd);
	CHECK(prctl(PR_SET_MDWE, 1, 0, 0, 0) == 0, "mdwe errno %d", errno);
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
		CHECK(membarrier(MB_GET_REGISTRATIONS) == MB_REGISTERED, "membarrier registrations %ld", membarrier(MB_GET_REGISTRATIONS));
		CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0, "membarrier private expedited errno %d", errno);
		CHECK(loginuid() == LOGINUID, "loginuid %ld", loginuid());
		CHECK(prctl(PR_GET_MDWE, 0, 0, 0, 0) == 1, "mdwe %d", prctl(PR_GET_MDWE, 0, 0, 0, 0));
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
