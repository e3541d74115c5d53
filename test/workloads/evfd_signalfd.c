/* signalfd: SIGUSR1 through an O_NONBLOCK signalfd (raised and read every
 * pass); SIGUSR2 left pending and watched by a blocking signalfd (must stay
 * readable). Checks masks (fdinfo sigmask) and flags. Logs "OK <pass>". */
#include "common.h"
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>

static unsigned long long sigmask_of(int fd)
{
	char p[64], buf[4096];
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
	ssize_t n = read_file(p, buf, sizeof buf - 1);
	CHECK(n > 0, "fdinfo");
	buf[n] = 0;
	char *c = strstr(buf, "sigmask:");
	CHECK(c != NULL, "no sigmask");
	return strtoull(c + 8, NULL, 16);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	sigset_t s1, s2, both;
	sigemptyset(&s1);
	sigaddset(&s1, SIGUSR1);
	sigemptyset(&s2);
	sigaddset(&s2, SIGUSR2);
	sigemptyset(&both);
	sigaddset(&both, SIGUSR1);
	sigaddset(&both, SIGUSR2);
	CHECK(sigprocmask(SIG_BLOCK, &both, NULL) == 0, "sigprocmask");
	int a = signalfd(-1, &s1, SFD_NONBLOCK);
	int b = signalfd(-1, &s2, 0);
	CHECK(a >= 0 && b >= 0, "signalfd errno %d", errno);
	raise(SIGUSR2);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		struct signalfd_siginfo si;
		CHECK(read(a, &si, sizeof si) < 0 && errno == EAGAIN, "a not empty (errno %d)", errno);
		raise(SIGUSR1);
		CHECK(read(a, &si, sizeof si) == sizeof si, "read a errno %d", errno);
		CHECK(si.ssi_signo == SIGUSR1, "a got signal %u", si.ssi_signo);
		struct pollfd pf = { b, POLLIN, 0 };
		CHECK(poll(&pf, 1, 0) == 1, "pending SIGUSR2 not readable through b");
		CHECK(sigmask_of(a) == 1ull << (SIGUSR1 - 1) && sigmask_of(b) == 1ull << (SIGUSR2 - 1), "sigmask %llx %llx", sigmask_of(a), sigmask_of(b));
		CHECK((fcntl(a, F_GETFL) & O_NONBLOCK) && !(fcntl(b, F_GETFL) & O_NONBLOCK), "flags");
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(10);
	}
}
