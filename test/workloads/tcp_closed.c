/* TCP sockets whose connection is over (state CLOSE, receive side shut),
 * each ended another way over loopback before READY:
 *   a: reset by the peer, the error already reported (recv gave ECONNRESET);
 *   b: reset, ECONNRESET not yet reported;
 *   c: 4 unread bytes, then reset, ECONNRESET not yet reported;
 *   d: the peer's FIN, then a reset: EPIPE pending (reads give 0 first);
 *   e: closed both ways (FIN, FIN), nothing pending;
 *   f: a non-blocking connect refused, ECONNREFUSED not yet reported;
 *   g: IPv6, reset, ECONNRESET not yet reported.
 * Every pass checks, without consuming anything, what poll() shows (HUP and
 * RDHUP everywhere, ERR where an error is pending), the bytes c holds
 * (MSG_PEEK), and that a and e read 0 and fail writes with EPIPE. Once
 * LOG.go exists it consumes the endings once: c reads its bytes, then
 * ECONNRESET; b and g ECONNRESET; d reads 0, then SO_ERROR is EPIPE; f
 * SO_ERROR ECONNREFUSED; then 0 / no error everywhere. Logs ENDINGS_REPORTED, then
 * "OK <pass>" with reads of 0 and no error left. */
#include "common.h"
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

static struct sockaddr_in lo = { .sin_family = AF_INET };

static int tcp_state(int s)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);
	return getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &l) == 0 ? ti.tcpi_state : -1;
}

static void wait_state(int s, int want, const char *what)
{
	for (int i = 0; i < 2000 && tcp_state(s) != want; i++)
		sleep_ms(1);
	CHECK(tcp_state(s) == want, "%s: state %d, want %d", what, tcp_state(s), want);
}

/* A connected pair over loopback (IPv4, or IPv6 with v6): *c is ours to keep, *p the peer. */
static void pair_of(int v6, int *c, int *p)
{
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct sockaddr_in a4 = lo;
	struct sockaddr *a = v6 ? (void *)&a6 : (void *)&a4;
	socklen_t al = v6 ? sizeof(a6) : sizeof(a4), len = al;
	int l = socket(a->sa_family, SOCK_STREAM, 0);
	CHECK(bind(l, a, len) == 0 && listen(l, 1) == 0 && getsockname(l, a, &al) == 0, "listen: errno %d", errno);
	*c = socket(a->sa_family, SOCK_STREAM, 0);
	CHECK(connect(*c, a, len) == 0, "connect: errno %d", errno);
	*p = accept(l, NULL, NULL);
	CHECK(*p >= 0, "accept: errno %d", errno);
	close(l);
}

static void pair(int *c, int *p)
{
	pair_of(0, c, p);
}

static void reset(int p)
{
	struct linger lg = { 1, 0 };
	CHECK(setsockopt(p, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0, "SO_LINGER: errno %d", errno);
	close(p);
}

static int so_error(int s)
{
	int e = -1;
	socklen_t l = sizeof(e);
	CHECK(getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &l) == 0, "SO_ERROR: errno %d", errno);
	return e;
}

/* poll shows the end (HUP, RDHUP) and a pending error (ERR) as it was. */
static void check_poll(const char *what, int s, int err)
{
	struct pollfd p = { s, POLLIN | POLLRDHUP, 0 };
	CHECK(poll(&p, 1, 0) == 1, "%s: poll: errno %d", what, errno);
	CHECK((p.revents & (POLLHUP | POLLRDHUP | POLLIN)) == (POLLHUP | POLLRDHUP | POLLIN), "%s: poll revents %#x: the connection's end is gone", what, p.revents);
	CHECK(!!(p.revents & POLLERR) == err, "%s: poll revents %#x, want the error %s", what, p.revents, err ? "pending" : "gone");
}

/* A socket with nothing pending: end-of-file, writes fail with EPIPE. */
static void check_eof(const char *what, int s)
{
	char b[8];
	errno = 0;
	ssize_t n = recv(s, b, sizeof(b), MSG_DONTWAIT);
	CHECK(n == 0, "%s: recv gave %zd (errno %d), want 0 (end-of-file)", what, n, errno);
	errno = 0;
	n = send(s, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	CHECK(n == -1 && errno == EPIPE, "%s: send gave %zd (errno %d), want EPIPE", what, n, errno);
}

static void check_recv_error(const char *what, int s, int want)
{
	char b[8];
	errno = 0;
	ssize_t n = recv(s, b, sizeof(b), MSG_DONTWAIT);
	CHECK(n == -1 && errno == want, "%s: recv gave %zd (errno %d), want errno %d", what, n, errno, want);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	lo.sin_addr.s_addr = htonl(0x7f000001);
	int a, b, c, d, e, f, g, p;
	char buf[8];

	pair(&a, &p);
	reset(p);
	wait_state(a, TCP_CLOSE, "a");
	check_recv_error("a", a, ECONNRESET);

	pair(&b, &p);
	reset(p);
	wait_state(b, TCP_CLOSE, "b");

	pair(&c, &p);
	CHECK(send(p, "tail", 4, 0) == 4, "send: errno %d", errno);
	for (int i = 0, q = 0; i < 2000 && (ioctl(c, FIONREAD, &q), q) < 4; i++)
		sleep_ms(1);
	reset(p);
	wait_state(c, TCP_CLOSE, "c");

	pair(&d, &p);
	shutdown(p, SHUT_WR);
	wait_state(d, TCP_CLOSE_WAIT, "d");
	reset(p);
	wait_state(d, TCP_CLOSE, "d");

	pair(&e, &p);
	close(p);
	wait_state(e, TCP_CLOSE_WAIT, "e");
	shutdown(e, SHUT_WR);
	wait_state(e, TCP_CLOSE, "e");

	struct sockaddr_in z = lo;
	socklen_t zl = sizeof(z);
	int zs = socket(AF_INET, SOCK_STREAM, 0); /* bound, never listening: connects to it are refused */
	CHECK(bind(zs, (void *)&z, sizeof(z)) == 0 && getsockname(zs, (void *)&z, &zl) == 0, "bind: errno %d", errno);
	f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	CHECK(connect(f, (void *)&z, sizeof(z)) == -1 && errno == EINPROGRESS, "non-blocking connect: errno %d", errno);
	wait_state(f, TCP_CLOSE, "f");
	close(zs);

	pair_of(1, &g, &p);
	reset(p);
	wait_state(g, TCP_CLOSE, "g");

	char go[4400];
	snprintf(go, sizeof(go), "%s.go", log_path);
	int reported = 0;
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		if (!reported) {
			check_poll("a", a, 0);
			check_eof("a", a);
			check_poll("b", b, 1);
			check_poll("c", c, 1);
			CHECK(recv(c, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT) == 4 && memcmp(buf, "tail", 4) == 0, "c: the unread bytes are gone (errno %d)", errno);
			check_poll("d", d, 1);
			check_poll("e", e, 0);
			check_eof("e", e);
			check_poll("f", f, 1);
			check_poll("g", g, 1);
			if (access(go, F_OK) == 0) {
				check_recv_error("b", b, ECONNRESET);
				check_recv_error("g", g, ECONNRESET);
				CHECK(recv(c, buf, sizeof(buf), MSG_DONTWAIT) == 4 && memcmp(buf, "tail", 4) == 0, "c: recv of the unread bytes: errno %d", errno);
				check_recv_error("c", c, ECONNRESET);
				CHECK(recv(d, buf, sizeof(buf), MSG_DONTWAIT) == 0, "d: recv before the error: errno %d", errno);
				CHECK(so_error(d) == EPIPE, "d: SO_ERROR is not EPIPE");
				CHECK(so_error(f) == ECONNREFUSED, "f: SO_ERROR is not ECONNREFUSED");
				reported = 1;
				wl_log("ENDINGS_REPORTED");
			}
		} else {
			int all[] = { a, b, c, d, e, f, g };
			const char *names = "abcdefg";
			for (int k = 0; k < 7; k++) {
				char w[2] = { names[k], 0 };
				CHECK(so_error(all[k]) == 0, "%s: an error is pending again", w);
				check_poll(w, all[k], 0);
				check_eof(w, all[k]);
			}
		}
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
