/* Signal-driven I/O and leases, checked from inside each pass:
 *  - a pipe's read end has O_ASYNC, F_SETOWN_EX (this process) and F_SETSIG
 *    SIGRTMIN+1: each byte written must raise that signal with si_fd set;
 *  - a read lease on file "r" and a write lease on file "w" (F_GETLEASE),
 *    unless LEASES is 0.
 *   file_owner LOG [LEASES]
 * Logs "OK <pass>". */
#include "common.h"
#include <signal.h>

static volatile sig_atomic_t got, got_fd = -1;

static void on_io(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	got++;
	got_fd = si->si_fd;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int sig = SIGRTMIN + 1;
	struct sigaction sa = { .sa_sigaction = on_io, .sa_flags = SA_SIGINFO | SA_RESTART };
	CHECK(sigaction(sig, &sa, NULL) == 0, "sigaction");
	int p[2];
	CHECK(pipe(p) == 0, "pipe");
	struct f_owner_ex own = { .type = F_OWNER_PID, .pid = getpid() };
	CHECK(fcntl(p[0], F_SETOWN_EX, &own) == 0, "F_SETOWN_EX: errno %d", errno);
	CHECK(fcntl(p[0], F_SETSIG, sig) == 0, "F_SETSIG");
	CHECK(fcntl(p[0], F_SETFL, O_ASYNC | O_NONBLOCK) == 0, "F_SETFL O_ASYNC");
	int leases = argc > 2 ? atoi(argv[2]) : 1, r = -1, w = -1;
	char path[4300];
	if (leases) {
		snprintf(path, sizeof(path), "%s/r", wl_dir());
		r = open(path, O_RDONLY | O_CREAT, 0644);
		CHECK(r >= 0 && fcntl(r, F_SETLEASE, F_RDLCK) == 0, "read lease: errno %d", errno);
		snprintf(path, sizeof(path), "%s/w", wl_dir());
		w = open(path, O_RDWR | O_CREAT, 0644);
		CHECK(w >= 0 && fcntl(w, F_SETLEASE, F_WRLCK) == 0, "write lease: errno %d", errno);
	}
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		CHECK(!leases || fcntl(r, F_GETLEASE) == F_RDLCK, "read lease lost: %d", fcntl(r, F_GETLEASE));
		CHECK(!leases || fcntl(w, F_GETLEASE) == F_WRLCK, "write lease lost: %d", fcntl(w, F_GETLEASE));
		CHECK(fcntl(p[0], F_GETFL) & O_ASYNC, "O_ASYNC lost");
		CHECK(fcntl(p[0], F_GETSIG) == sig, "F_GETSIG %d", fcntl(p[0], F_GETSIG));
		struct f_owner_ex o = { 0, 0 };
		CHECK(fcntl(p[0], F_GETOWN_EX, &o) == 0 && o.type == F_OWNER_PID && o.pid == getpid(), "owner %d/%d", o.type, o.pid);
		int before = got;
		CHECK(write(p[1], "x", 1) == 1, "write");
		for (int k = 0; k < 100 && got == before; k++)
			sleep_ms(10);
		CHECK(got > before, "no signal for the byte written");
		CHECK(got_fd == p[0], "si_fd %d, want %d", (int)got_fd, p[0]);
		char c;
		CHECK(read(p[0], &c, 1) == 1, "read");
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
