/* Job control: a child stopped with SIGSTOP stays stopped across the dump
 * (its counter, in memory shared with the parent, must not move), and runs
 * on when continued. Once LOG.go exists the parent sends SIGCONT, checks
 * that the counter moves again and logs "CONTINUED".
 * Logs "OK <pass>". */
#include "common.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	volatile uint64_t *counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(counter != MAP_FAILED, "mmap");
	pid_t child = fork();
	CHECK(child >= 0, "fork");
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* no orphan when the test kills the parent */
		for (;;) {
			(*counter)++;
			sleep_ms(1);
		}
	}
	while (*counter < 3)
		sleep_ms(1);
	CHECK(kill(child, SIGSTOP) == 0, "kill SIGSTOP");
	int st;
	CHECK(waitpid(child, &st, WUNTRACED) == child && WIFSTOPPED(st), "child did not stop");
	char go[4200];
	snprintf(go, sizeof(go), "%s.go", log_path);
	int continued = 0;
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		uint64_t c = *counter;
		sleep_ms(30);
		if (!continued) {
			CHECK(*counter == c, "the stopped child ran: counter %lu -> %lu", (unsigned long)c, (unsigned long)*counter);
			if (access(go, F_OK) == 0) {
				CHECK(kill(child, SIGCONT) == 0, "kill SIGCONT");
				uint64_t before = *counter;
				for (int k = 0; k < 200 && *counter == before; k++)
					sleep_ms(10);
				CHECK(*counter > before, "the child did not run after SIGCONT");
				continued = 1;
				wl_log("CONTINUED");
			}
		} else {
			for (int k = 0; k < 200 && *counter == c; k++)
				sleep_ms(10);
			CHECK(*counter > c, "the continued child stalled");
		}
		wl_log("OK %lu", (unsigned long)i);
	}
}
