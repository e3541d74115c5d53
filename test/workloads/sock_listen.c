/* TCP listeners, IPv4 and IPv6, with options. Each pass checks that the
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
	struct pollfd p = { l, POLLIN, 0 };
	CHECK(poll(&p, 1, 5000) == 1, "listener not readable");
	int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	CHECK(a >= 0, "accept: errno %d", errno);
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

	l6 = socket(AF_INET6, SOCK_STREAM, 0); /* no CLOEXEC, blocking */
	CHECK(l6 >= 0, "socket6");
	setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	setsockopt(l6, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	CHECK(bind(l6, (struct sockaddr *)&a6, sizeof(a6)) == 0, "bind6: errno %d", errno);
	CHECK(listen(l6, 5) == 0, "listen6");
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
