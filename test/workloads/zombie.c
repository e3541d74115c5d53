/* A parent with an unreaped zombie child (exit status 7) and a live child:
 * after restore the zombie must still be there to reap with its status,
 * and the live child must still be the parent's. */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pid_t z = fork();
	if (z == 0)
		_exit(7);
	pid_t live = fork();
	if (live == 0) {
		for (;;)
			sleep_ms(50);
	}
	/* wait until the first child is a zombie, without reaping it */
	siginfo_t si;
	CHECK(waitid(P_PID, z, &si, WEXITED | WNOWAIT) == 0, "waitid");
	wl_log("ZOMBIE %d", z);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		char path[64], buf[512];
		snprintf(path, sizeof(path), "/proc/%d/stat", z);
		ssize_t n = read_file(path, buf, sizeof(buf));
		/* the zombie may be looked at on the host /proc under another pid
		   when restored in a pid namespace; waitid is the real check */
		(void)n;
		memset(&si, 0, sizeof(si));
		CHECK(waitid(P_PID, z, &si, WEXITED | WNOWAIT | WNOHANG) == 0 && si.si_pid == z, "zombie %d gone", z);
		CHECK(si.si_code == CLD_EXITED && si.si_status == 7, "zombie status %d/%d", si.si_code, si.si_status);
		CHECK(kill(live, 0) == 0, "live child gone");
		CHECK(waitpid(live, NULL, WNOHANG) == 0, "live child not ours");
		if (i == 30) {
			/* later passes: reap it for real */
		}
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
