/* Datagram sockets beside UDP: a raw ICMP socket bound to loopback with an
 * ICMP_FILTER that lets only echo replies through, an IPPROTO_RAW socket
 * (IP_HDRINCL), a bound UDP-Lite socket, and, when the host lets this
 * group open one (net.ipv4.ping_group_range), an ICMP echo ("ping")
 * socket connected to loopback. Each pass pings loopback through the raw
 * socket and the ping socket, checks the replies, the filter, the options
 * and the addresses. Logs "PING yes|no" once, then "OK <pass>". */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sys/socket.h>

#define ICMP_FILTER_OPT 1 /* SOL_RAW ICMP_FILTER (linux/icmp.h clashes with netinet) */

static unsigned short csum(const void *b, int len)
{
	const unsigned short *p = b;
	unsigned s = 0;
	for (; len > 1; len -= 2)
		s += *p++;
	if (len)
		s += *(const unsigned char *)p;
	s = (s >> 16) + (s & 0xffff);
	s += s >> 16;
	return (unsigned short)~s;
}

/* Send an echo request with sequence `seq` and wait for its reply;
 * `ip`: the reply comes with its IP header (raw socket). */
static void ping(int fd, const struct sockaddr_in *to, unsigned short seq, int ip, const char *what)
{
	struct icmphdr h = { .type = ICMP_ECHO, .un.echo.id = htons(0x4242), .un.echo.sequence = htons(seq) };
	h.checksum = csum(&h, sizeof(h));
	ssize_t n = to ? sendto(fd, &h, sizeof(h), 0, (const struct sockaddr *)to, sizeof(*to)) : send(fd, &h, sizeof(h), 0);
	CHECK(n == (ssize_t)sizeof(h), "%s: send errno %d", what, errno);
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		CHECK(poll(&p, 1, 2000) == 1, "%s: no echo reply", what);
		char b[256];
		n = recv(fd, b, sizeof(b), 0);
		const struct icmphdr *r = (const struct icmphdr *)(b + (ip ? 20 : 0));
		CHECK(n >= (ip ? 28 : 8), "%s: recv %zd errno %d", what, n, errno);
		CHECK(r->type == ICMP_ECHOREPLY, "%s: type %d got through", what, r->type);
		if (ntohs(r->un.echo.sequence) == seq)
			return; /* (a raw socket also sees other sockets' replies) */
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct sockaddr_in lo = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int raw = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	CHECK(raw >= 0, "raw socket: errno %d", errno);
	unsigned filter = ~(1u << ICMP_ECHOREPLY);
	CHECK(setsockopt(raw, SOL_RAW, ICMP_FILTER_OPT, &filter, sizeof(filter)) == 0, "ICMP_FILTER: errno %d", errno);
	CHECK(bind(raw, (struct sockaddr *)&lo, sizeof(lo)) == 0, "bind raw: errno %d", errno);
	int hdr = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	int lite = socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE);
	CHECK(hdr >= 0 && lite >= 0, "socket: errno %d", errno);
	struct sockaddr_in la = lo;
	CHECK(bind(lite, (struct sockaddr *)&la, sizeof(la)) == 0, "bind udplite: errno %d", errno);
	socklen_t ll = sizeof(la);
	CHECK(getsockname(lite, (struct sockaddr *)&la, &ll) == 0, "getsockname");
	int pingfd = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
	if (pingfd >= 0)
		CHECK(connect(pingfd, (struct sockaddr *)&lo, sizeof(lo)) == 0, "connect ping socket: errno %d", errno);
	wl_log("PING %s", pingfd >= 0 ? "yes" : "no");
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		ping(raw, &lo, (unsigned short)i, 1, "raw ICMP socket");
		if (pingfd >= 0)
			ping(pingfd, NULL, (unsigned short)i, 0, "ping socket");
		unsigned f = 0;
		socklen_t l = sizeof(f);
		CHECK(getsockopt(raw, SOL_RAW, ICMP_FILTER_OPT, &f, &l) == 0 && f == filter, "ICMP_FILTER %x", f);
		int v = 0;
		l = sizeof(v);
		CHECK(getsockopt(hdr, IPPROTO_IP, IP_HDRINCL, &v, &l) == 0 && v == 1, "IP_HDRINCL %d", v);
		l = sizeof(v);
		CHECK(getsockopt(lite, SOL_SOCKET, SO_PROTOCOL, &v, &l) == 0 && v == IPPROTO_UDPLITE, "udplite protocol %d", v);
		struct sockaddr_in now;
		l = sizeof(now);
		CHECK(getsockname(lite, (struct sockaddr *)&now, &l) == 0 && now.sin_port == la.sin_port, "udplite port");
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
