/* UDP sockets, IPv4 and IPv6: a bound "server" and a connected "client" per
 * family. Each pass checks addresses, peers and options are unchanged and
 * carries a datagram each way. Nothing is left queued between passes.
 * And a connected pair shut down one way (shutdown(2)): one end cannot
 * send (EPIPE), the other still can. */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

struct pair {
	int family, srv, cli;
	struct sockaddr_storage srv_addr, cli_addr;
	socklen_t len;
};

static void name_of(int fd, struct sockaddr_storage *ss, socklen_t *len, int peer)
{
	*len = sizeof(*ss);
	memset(ss, 0, sizeof(*ss));
	int r = peer ? getpeername(fd, (struct sockaddr *)ss, len) : getsockname(fd, (struct sockaddr *)ss, len);
	CHECK(r == 0, "get%sname: errno %d", peer ? "peer" : "sock", errno);
}

static void setup(struct pair *p, int family)
{
	int one = 1;
	p->family = family;
	p->srv = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	p->cli = socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	CHECK(p->srv >= 0 && p->cli >= 0, "socket");
	setsockopt(p->srv, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
	setsockopt(p->srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		p->len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		p->len = sizeof(*a);
	}
	CHECK(bind(p->srv, (struct sockaddr *)&ss, p->len) == 0, "bind: errno %d", errno);
	socklen_t l;
	name_of(p->srv, &p->srv_addr, &l, 0);
	CHECK(connect(p->cli, (struct sockaddr *)&p->srv_addr, l) == 0, "connect: errno %d", errno);
	name_of(p->cli, &p->cli_addr, &l, 0);
}

static void pass(struct pair *p, int n)
{
	struct sockaddr_storage ss;
	socklen_t l;
	name_of(p->srv, &ss, &l, 0);
	CHECK(memcmp(&ss, &p->srv_addr, l) == 0, "family %d: server address changed", p->family);
	name_of(p->cli, &ss, &l, 0);
	CHECK(memcmp(&ss, &p->cli_addr, l) == 0, "family %d: client address changed", p->family);
	name_of(p->cli, &ss, &l, 1);
	CHECK(memcmp(&ss, &p->srv_addr, l) == 0, "family %d: client peer changed", p->family);
	int v = 0;
	socklen_t vl = sizeof(v);
	getsockopt(p->srv, SOL_SOCKET, SO_BROADCAST, &v, &vl);
	CHECK(v == 1, "SO_BROADCAST lost");
	CHECK(fcntl(p->cli, F_GETFL) & O_NONBLOCK, "client lost O_NONBLOCK");
	char buf[64], got[64];
	int len = snprintf(buf, sizeof(buf), "ping %d", n);
	CHECK(send(p->cli, buf, len, 0) == len, "send: errno %d", errno);
	struct sockaddr_storage from;
	socklen_t fl = sizeof(from);
	struct pollfd pf = { p->srv, POLLIN, 0 };
	CHECK(poll(&pf, 1, 5000) == 1, "server got nothing");
	ssize_t r = recvfrom(p->srv, got, sizeof(got), 0, (struct sockaddr *)&from, &fl);
	CHECK(r == len && memcmp(got, buf, len) == 0, "server got a wrong datagram");
	CHECK(memcmp(&from, &p->cli_addr, fl) == 0, "datagram from an unexpected address");
	len = snprintf(buf, sizeof(buf), "pong %d", n);
	CHECK(sendto(p->srv, buf, len, 0, (struct sockaddr *)&from, fl) == len, "sendto: errno %d", errno);
	pf.fd = p->cli;
	CHECK(poll(&pf, 1, 5000) == 1, "client got nothing");
	r = recv(p->cli, got, sizeof(got), 0);
	CHECK(r == len && memcmp(got, buf, len) == 0, "client got a wrong datagram");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct pair p4, p6;
	setup(&p4, AF_INET);
	setup(&p6, AF_INET6);
	/* su: sending shut down; sv: receiving shut down. */
	int su = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), sv = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) }, au, av;
	socklen_t al = sizeof(au);
	CHECK(bind(su, (struct sockaddr *)&lo, sizeof(lo)) == 0 && bind(sv, (struct sockaddr *)&lo, sizeof(lo)) == 0, "bind: errno %d", errno);
	getsockname(su, (struct sockaddr *)&au, &al);
	al = sizeof(av);
	getsockname(sv, (struct sockaddr *)&av, &al);
	CHECK(connect(su, (struct sockaddr *)&av, sizeof(av)) == 0 && connect(sv, (struct sockaddr *)&au, sizeof(au)) == 0, "connect: errno %d", errno);
	CHECK(shutdown(su, SHUT_WR) == 0 && shutdown(sv, SHUT_RD) == 0, "shutdown: errno %d", errno);
	wl_log("READY");
	for (int n = 1;; n++) {
		pass(&p4, n);
		pass(&p6, n);
		CHECK(send(su, "x", 1, MSG_NOSIGNAL) == -1 && errno == EPIPE, "a UDP socket shut down for sending sends (errno %d)", errno);
		CHECK(send(sv, "y", 1, 0) == 1, "send on a UDP socket shut down for receiving only: errno %d", errno);
		struct pollfd pu = { su, POLLIN, 0 };
		char y;
		CHECK(poll(&pu, 1, 5000) == 1 && recv(su, &y, 1, 0) == 1 && y == 'y', "a UDP socket shut down for sending no longer receives");
		wl_log("OK %d", n);
		sleep_ms(100);
	}
}
