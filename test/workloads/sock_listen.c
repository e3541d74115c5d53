/* TCP listeners, IPv4 and IPv6, with options (also behaviour-only ones:
 * SO_RCVTIMEO, SO_PRIORITY, SO_MARK, IP_TOS, TCP_USER_TIMEOUT on the v4
 * one, IPV6_TCLASS and SO_SNDTIMEO on the v6 one, SO_LINGER on an unbound
 * socket: accepted sockets would inherit it, and their closing is slower). Each pass checks that the
 * bound addresses, options and O_NONBLOCK are unchanged and that each
 * listener accepts a connection from this process and carries a byte.
 * Logs "PORTS <v4> <v6>" before READY. */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static int l4, l6;
static int port4, port6;

static int opt(int fd, int level, int name)
{
	int v = 0;
	socklen_t len = sizeof(v);
	if (getsockopt(fd, level, name, &v, &len) < 0)
		FAIL("getsockopt %d/%d: errno %d", level, name, errno);
	return v;
}

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		FAIL("getsockname: errno %d", errno);
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		CHECK(a->sin_addr.s_addr == htonl(INADDR_LOOPBACK), "v4 address changed");
		return ntohs(a->sin_port);
	}
	struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
	CHECK(IN6_IS_ADDR_LOOPBACK(&a->sin6_addr), "v6 address changed");
	return ntohs(a->sin6_port);
}

static void roundtrip(int l, int family, int port, int n)
{
	int c = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(c >= 0, "socket: errno %d", errno);
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	socklen_t len;
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_port = htons(port);
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		a->sin6_addr = in6addr_loopback;
		len = sizeof(*a);
	}
	if (connect(c, (struct sockaddr *)&ss, len) < 0)
		FAIL("connect to own listener (family %d port %d): errno %d", family, port, errno);
	/* A connection from outside (a test checking that the listeners still
	 * take them) may come first: only our own client's is used. */
	struct sockaddr_storage mine, peer;
	socklen_t ml = sizeof(mine);
	CHECK(getsockname(c, (struct sockaddr *)&mine, &ml) == 0, "getsockname: errno %d", errno);
	int a;
	for (;;) {
		struct pollfd p = { l, POLLIN, 0 };
		CHECK(poll(&p, 1, 5000) == 1, "listener not readable");
		socklen_t pl = sizeof(peer);
		a = accept4(l, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);
		CHECK(a >= 0, "accept: errno %d", errno);
		if (pl == ml && memcmp(&peer, &mine, ml) == 0)
			break;
		close(a);
	}
	unsigned char b = n & 0xff, r = 0;
	CHECK(write(c, &b, 1) == 1, "write: errno %d", errno);
	CHECK(read(a, &r, 1) == 1 && r == b, "read back %u != %u", r, b);
	close(a);
	close(c);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int one = 1, idle = 77;
	l4 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	CHECK(l4 >= 0, "socket4");
	setsockopt(l4, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(l4, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(l4, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(l4, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	CHECK(bind(l4, (struct sockaddr *)&a4, sizeof(a4)) == 0, "bind4: errno %d", errno);
	CHECK(listen(l4, 7) == 0, "listen4");
	struct timeval rto = { 1, 500000 }, sto = { 2, 200000 };
	struct linger lg = { 1, 7 };
	int prio = 5, mark = 42, tos = 0x10, uto = 12345, tclass = 0x20;
	CHECK(setsockopt(l4, SOL_SOCKET, SO_RCVTIMEO, &rto, sizeof(rto)) == 0, "SO_RCVTIMEO");
	int xs = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(xs >= 0 && setsockopt(xs, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == 0, "SO_LINGER");
	CHECK(setsockopt(l4, IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) == 0, "IP_TOS");
	CHECK(setsockopt(l4, SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio)) == 0, "SO_PRIORITY"); /* after IP_TOS, which sets it too */
	CHECK(setsockopt(l4, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) == 0, "SO_MARK: errno %d", errno);
	CHECK(setsockopt(l4, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof(uto)) == 0, "TCP_USER_TIMEOUT");

	l6 = socket(AF_INET6, SOCK_STREAM, 0); /* no CLOEXEC, blocking */
	CHECK(l6 >= 0, "socket6");
	setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	setsockopt(l6, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	CHECK(bind(l6, (struct sockaddr *)&a6, sizeof(a6)) == 0, "bind6: errno %d", errno);
	CHECK(listen(l6, 5) == 0, "listen6");
	CHECK(setsockopt(l6, IPPROTO_IPV6, IPV6_TCLASS, &tclass, sizeof(tclass)) == 0, "IPV6_TCLASS");
	CHECK(setsockopt(l6, SOL_SOCKET, SO_SNDTIMEO, &sto, sizeof(sto)) == 0, "SO_SNDTIMEO");
	port4 = port_of(l4);
	port6 = port_of(l6);
	wl_log("PORTS %d %d", port4, port6);
	wl_log("READY");
	for (int n = 1;; n++) {
		CHECK(port_of(l4) == port4, "v4 port changed");
		CHECK(port_of(l6) == port6, "v6 port changed");
		CHECK(opt(l4, SOL_SOCKET, SO_ACCEPTCONN) == 1, "l4 not listening");
		CHECK(opt(l6, SOL_SOCKET, SO_ACCEPTCONN) == 1, "l6 not listening");
		CHECK(opt(l4, SOL_SOCKET, SO_DOMAIN) == AF_INET, "l4 domain");
		CHECK(opt(l6, SOL_SOCKET, SO_DOMAIN) == AF_INET6, "l6 domain");
		CHECK(opt(l4, SOL_SOCKET, SO_REUSEADDR) == 1, "l4 SO_REUSEADDR lost");
		CHECK(opt(l6, SOL_SOCKET, SO_REUSEADDR) == 0, "l6 SO_REUSEADDR appeared");
		CHECK(opt(l6, SOL_SOCKET, SO_REUSEPORT) == 1, "l6 SO_REUSEPORT lost");
		CHECK(opt(l4, IPPROTO_TCP, TCP_NODELAY) == 1, "l4 TCP_NODELAY lost");
		CHECK(opt(l4, SOL_SOCKET, SO_KEEPALIVE) == 1, "l4 SO_KEEPALIVE lost");
		CHECK(opt(l4, IPPROTO_TCP, TCP_KEEPIDLE) == 77, "l4 TCP_KEEPIDLE %d", opt(l4, IPPROTO_TCP, TCP_KEEPIDLE));
		CHECK(opt(l6, IPPROTO_IPV6, IPV6_V6ONLY) == 1, "l6 IPV6_V6ONLY lost");
		struct timeval tv = { 0, 0 };
		socklen_t tl = sizeof(tv);
		CHECK(getsockopt(l4, SOL_SOCKET, SO_RCVTIMEO, &tv, &tl) == 0 && tv.tv_sec == 1 && tv.tv_usec == 500000, "l4 SO_RCVTIMEO %ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
		tl = sizeof(tv);
		CHECK(getsockopt(l6, SOL_SOCKET, SO_SNDTIMEO, &tv, &tl) == 0 && tv.tv_sec == 2 && tv.tv_usec == 200000, "l6 SO_SNDTIMEO %ld.%06ld", (long)tv.tv_sec, (long)tv.tv_usec);
		struct linger l = { 0, 0 };
		socklen_t ll = sizeof(l);
		CHECK(getsockopt(xs, SOL_SOCKET, SO_LINGER, &l, &ll) == 0 && l.l_onoff == 1 && l.l_linger == 7, "SO_LINGER %d/%d", l.l_onoff, l.l_linger);
		CHECK(opt(l4, SOL_SOCKET, SO_PRIORITY) == 5, "l4 SO_PRIORITY %d", opt(l4, SOL_SOCKET, SO_PRIORITY));
		CHECK(opt(l4, SOL_SOCKET, SO_MARK) == 42, "l4 SO_MARK %d", opt(l4, SOL_SOCKET, SO_MARK));
		CHECK(opt(l4, IPPROTO_IP, IP_TOS) == 0x10, "l4 IP_TOS %#x", opt(l4, IPPROTO_IP, IP_TOS));
		CHECK(opt(l4, IPPROTO_TCP, TCP_USER_TIMEOUT) == 12345, "l4 TCP_USER_TIMEOUT %d", opt(l4, IPPROTO_TCP, TCP_USER_TIMEOUT));
		CHECK(opt(l6, IPPROTO_IPV6, IPV6_TCLASS) == 0x20, "l6 IPV6_TCLASS %#x", opt(l6, IPPROTO_IPV6, IPV6_TCLASS));
		CHECK(fcntl(l4, F_GETFL) & O_NONBLOCK, "l4 lost O_NONBLOCK");
		CHECK(!(fcntl(l6, F_GETFL) & O_NONBLOCK), "l6 became O_NONBLOCK");
		CHECK(fcntl(l4, F_GETFD) & FD_CLOEXEC, "l4 lost FD_CLOEXEC");
		CHECK(!(fcntl(l6, F_GETFD) & FD_CLOEXEC), "l6 became FD_CLOEXEC");
		roundtrip(l4, AF_INET, port4, n);
		roundtrip(l6, AF_INET6, port6, n);
		wl_log("OK %d", n);
		sleep_ms(100);
	}
}
