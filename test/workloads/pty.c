/* A pseudo-terminal pair the tree opened for itself must come back as one
 * connected pair, with its settings and its controlling-terminal session.
 *
 * Processes:
 *   P (root)   holds the master (O_NOCTTY), sets a distinctive termios on
 *              the slave side (raw: no ICANON/ECHO/ISIG/OPOST, VMIN 6,
 *              VTIME 0, VINTR ^G, 9600 baud) and a window size of 37x123
 *              (1x2 pixels). Every pass (20 ms) it sends a 6-byte request
 *              through the master and waits for the answer that comes back
 *              through the slave, then checks termios and window size
 *              through the master. Logs "OK <pass>".
 *   C          setsid + TIOCSCTTY on the slave: session leader with the
 *              slave as controlling terminal. Forks G into a process group of
 *              its own and makes it the foreground group. Checks every 20 ms
 *              that /dev/tty opens and is the slave it holds (same rdev, same
 *              ttyname), that /proc/self/stat tty_nr is the slave, that the
 *              terminal's session is C and its foreground group is G.
 *   G          the foreground group: answers each request read from the
 *              slave (VMIN 6: one read, one request). Checks that /dev/tty
 *              is the slave too (inherited from C) and that it is in the
 *              foreground, unless argv[2] is "leader-ctty-only" (after a
 *              migration only the session leader has it back).
 *
 * Bytes in flight at the moment of the freeze are dropped by phaul (a
 * warning); P resends a request without an answer every 300 ms and fails
 * only after 5 s without one (the pair is not connected). */
#include "common.h"
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>

#define MSG 6
static const struct winsize want_ws = { 37, 123, 1, 2 };
static struct termios want_t;
static int check_members = 1;

static void make_termios(int m)
{
	struct termios t;
	CHECK(tcgetattr(m, &t) == 0, "tcgetattr errno %d", errno);
	t.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
	t.c_iflag |= IXANY;
	t.c_oflag &= ~OPOST;
	t.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
	t.c_cflag &= ~(CSIZE | PARENB);
	t.c_cflag |= CS8;
	t.c_cc[VMIN] = MSG;
	t.c_cc[VTIME] = 0;
	t.c_cc[VINTR] = 0x07;
	cfsetispeed(&t, B9600);
	cfsetospeed(&t, B9600);
	CHECK(tcsetattr(m, TCSANOW, &t) == 0, "tcsetattr errno %d", errno);
	CHECK(tcgetattr(m, &want_t) == 0, "tcgetattr errno %d", errno);
}

static void check_termios(int fd, const char *who)
{
	struct termios t;
	CHECK(tcgetattr(fd, &t) == 0, "%s: tcgetattr errno %d", who, errno);
	CHECK(t.c_iflag == want_t.c_iflag && t.c_oflag == want_t.c_oflag && t.c_cflag == want_t.c_cflag && t.c_lflag == want_t.c_lflag,
	      "%s: termios flags i%#x o%#x c%#x l%#x, expected i%#x o%#x c%#x l%#x", who, t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag,
	      want_t.c_iflag, want_t.c_oflag, want_t.c_cflag, want_t.c_lflag);
	for (int i = 0; i < 19; i++)
		CHECK(t.c_cc[i] == want_t.c_cc[i], "%s: c_cc[%d] is %d, expected %d", who, i, t.c_cc[i], want_t.c_cc[i]);
	CHECK(cfgetispeed(&t) == B9600 && cfgetospeed(&t) == B9600, "%s: speed changed", who);
	struct winsize ws;
	CHECK(ioctl(fd, TIOCGWINSZ, &ws) == 0, "%s: TIOCGWINSZ errno %d", who, errno);
	CHECK(ws.ws_row == want_ws.ws_row && ws.ws_col == want_ws.ws_col && ws.ws_xpixel == want_ws.ws_xpixel && ws.ws_ypixel == want_ws.ws_ypixel,
	      "%s: window %ux%u (%ux%u px), expected 37x123 (1x2 px)", who, ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel);
}

/* /dev/tty must open (a controlling terminal exists) and be the slave `s`
 * (TIOCGDEV: the device behind /dev/tty; fstat would show /dev/tty itself). */
static void check_ctty(int s, const char *who)
{
	int t = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
	CHECK(t >= 0, "%s: open /dev/tty errno %d (no controlling terminal)", who, errno);
	unsigned int dev = 0;
	struct stat b;
	CHECK(ioctl(t, TIOCGDEV, &dev) == 0, "%s: TIOCGDEV errno %d", who, errno);
	CHECK(fstat(s, &b) == 0, "%s: fstat errno %d", who, errno);
	CHECK(major(dev) == major(b.st_rdev) && minor(dev) == minor(b.st_rdev), "%s: /dev/tty is %u:%u, the slave is %u:%u", who, major(dev),
	      minor(dev), major(b.st_rdev), minor(b.st_rdev));
	char n1[64] = "", n2[64] = "";
	snprintf(n1, sizeof n1, "/dev/pts/%u", (major(dev) - 136) * 256 + minor(dev));
	CHECK(ttyname_r(s, n2, sizeof n2) == 0, "%s: ttyname errno %d", who, errno);
	CHECK(strcmp(n1, n2) == 0, "%s: /dev/tty is %s, ttyname of the slave %s", who, n1, n2);
	close(t);
	char st[1024];
	ssize_t n = read_file("/proc/self/stat", st, sizeof st - 1);
	CHECK(n > 0, "%s: read /proc/self/stat", who);
	st[n] = 0;
	char *p = strrchr(st, ')');
	unsigned long tty_nr = 0;
	CHECK(p && sscanf(p + 2, "%*c %*d %*d %*d %lu", &tty_nr) == 1, "%s: parse stat", who);
	CHECK(tty_nr == (unsigned long)(major(b.st_rdev) << 8 | (minor(b.st_rdev) & 0xff) | (minor(b.st_rdev) & ~0xffu) << 12),
	      "%s: tty_nr %#lx is not the slave", who, tty_nr);
}

static int read_full(int fd, unsigned char *b, int len)
{
	int got = 0;
	while (got < len) {
		ssize_t n = read(fd, b + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += n;
	}
	return got;
}

/* G: answer requests 'Q' seq(4) sum -> 'R' seq(4) sum */
static void answer_loop(int s)
{
	uint64_t next_check = 0;
	for (;;) {
		unsigned char q[MSG];
		if (read_full(s, q, MSG) < 0) {
			/* EIO: the master is closed, P is gone (killed at the end of a test) */
			CHECK(errno == EIO, "G: read from the slave: errno %d", errno);
			_exit(0);
		}
		unsigned char sum = q[0] ^ q[1] ^ q[2] ^ q[3] ^ q[4];
		if (q[0] != 'Q' || q[5] != sum) {
			/* a request cut by the dump: drop what is left and wait for the resend */
			tcflush(s, TCIFLUSH);
			continue;
		}
		q[0] = 'R';
		q[5] = q[0] ^ q[1] ^ q[2] ^ q[3] ^ q[4];
		CHECK(write(s, q, MSG) == MSG, "G: write to the slave errno %d", errno);
		if (mono_ns() >= next_check) {
			check_termios(s, "G");
			if (check_members) {
				/* (tcgetpgrp needs the slave to be our controlling terminal) */
				CHECK(tcgetpgrp(s) == getpid(), "G: foreground group %d, expected %d", tcgetpgrp(s), getpid());
				check_ctty(s, "G");
			}
			next_check = mono_ns() + 20000000ull;
		}
	}
}

/* C: session leader with the slave as controlling terminal */
static void leader(const char *sname)
{
	CHECK(setsid() == getpid(), "setsid errno %d", errno);
	int s = open(sname, O_RDWR | O_NOCTTY | O_CLOEXEC);
	CHECK(s >= 0, "open %s errno %d", sname, errno);
	CHECK(ioctl(s, TIOCSCTTY, 0) == 0, "TIOCSCTTY errno %d", errno);
	pid_t g = fork();
	CHECK(g >= 0, "fork errno %d", errno);
	if (g == 0) {
		setpgid(0, 0);
		/* wait until C made us the foreground group */
		while (tcgetpgrp(s) != getpid())
			sleep_ms(1);
		answer_loop(s);
	}
	setpgid(g, g);
	/* C is in the background from now on: TIOCSPGRP must not stop it */
	signal(SIGTTOU, SIG_IGN);
	CHECK(tcsetpgrp(s, g) == 0, "tcsetpgrp errno %d", errno);
	for (;;) {
		check_ctty(s, "C");
		CHECK(tcgetsid(s) == getpid(), "C: terminal session %d, expected %d", tcgetsid(s), getpid());
		CHECK(tcgetpgrp(s) == g, "C: foreground group %d, expected %d", tcgetpgrp(s), g);
		int st;
		CHECK(waitpid(g, &st, WNOHANG) == 0, "C: G ended (status %#x)", st);
		sleep_ms(20);
	}
}

/* P: one request/answer round trip through the pair; false on timeout */
static int exchange(int m, uint32_t seq)
{
	unsigned char q[MSG] = { 'Q' };
	memcpy(q + 1, &seq, 4);
	q[5] = q[0] ^ q[1] ^ q[2] ^ q[3] ^ q[4];
	static unsigned char buf[256];
	static int have;
	uint64_t deadline = mono_ns() + 5000000000ull;
	while (mono_ns() < deadline) {
		CHECK(write(m, q, MSG) == MSG, "P: write to the master errno %d", errno);
		uint64_t resend = mono_ns() + 300000000ull;
		while (mono_ns() < resend) {
			struct pollfd pf = { m, POLLIN, 0 };
			int r = poll(&pf, 1, 50);
			if (r < 0 && errno == EINTR)
				continue;
			CHECK(r >= 0, "P: poll errno %d", errno);
			CHECK(!(pf.revents & (POLLHUP | POLLERR)) || (pf.revents & POLLIN), "P: master poll revents %#x", pf.revents);
			if (r == 0)
				continue;
			ssize_t n = read(m, buf + have, sizeof buf - have);
			CHECK(n > 0, "P: read from the master errno %d", errno);
			have += n;
			/* look for our answer; anything before it is a stale or cut answer */
			for (int i = 0; i + MSG <= have; i++) {
				unsigned char *a = buf + i;
				if (a[0] == 'R' && memcmp(a + 1, &seq, 4) == 0 && a[5] == (a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4])) {
					have -= i + MSG;
					memmove(buf, a + MSG, have);
					return 1;
				}
			}
			if (have > MSG) {
				memmove(buf, buf + have - MSG, MSG);
				have = MSG;
			}
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc > 2 && strcmp(argv[2], "leader-ctty-only") == 0)
		check_members = 0;
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	CHECK(m >= 0, "posix_openpt errno %d", errno);
	CHECK(grantpt(m) == 0 && unlockpt(m) == 0, "grantpt/unlockpt errno %d", errno);
	char sname[64];
	CHECK(ptsname_r(m, sname, sizeof sname) == 0, "ptsname errno %d", errno);
	make_termios(m);
	CHECK(ioctl(m, TIOCSWINSZ, &want_ws) == 0, "TIOCSWINSZ errno %d", errno);
	pid_t c = fork();
	CHECK(c >= 0, "fork errno %d", errno);
	if (c == 0) {
		close(m);
		leader(sname);
	}
	uint32_t seq = 0;
	CHECK(exchange(m, seq++), "P: no answer from G before READY");
	wl_log("READY %s", sname);
	for (uint64_t pass = 1;; pass++) {
		CHECK(exchange(m, seq++), "P: no answer through the pair for 5 s (pass %lu)", (unsigned long)pass);
		check_termios(m, "P");
		int st;
		CHECK(waitpid(c, &st, WNOHANG) == 0, "P: C ended (status %#x)", st);
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(20);
	}
}
