/* Socket settings a program makes and expects to keep: buffer sizes set
 * with SO_SNDBUF/SO_RCVBUF (which also stop TCP's autotuning) on an
 * unconnected TCP socket, a TCP listener, UDP and unix sockets; reception
 * flags (IP_PKTINFO, IP_RECVERR, IP_RECVTOS, IPV6_RECVPKTINFO,
 * IPV6_RECVERR, SO_TIMESTAMP, SO_TIMESTAMPNS, SO_NO_CHECK); and a datagram
 * left in a unix socket whose pair's other end has closed. Each pass
 * checks every value against what the kernel reported right after it was
 * set, and peeks at the datagram; and a Multipath TCP listener on
 * loopback (IPPROTO_MPTCP, as Go makes its listeners), which each pass
 * takes a TCP connection on. Logs "OK <pass>". */
#include "common.h"
#include <netinet/in.h>
#include <sys/socket.h>

struct opt {
	int fd, level, name, want;
	const char *what;
};

static struct opt opts[32];
static int nopts;

static int get(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	CHECK(getsockopt(fd, level, name, &v, &l) == 0, "getsockopt(%d, %d): errno %d", level, name, errno);
	return v;
}

static void set(int fd, int level, int name, int v, const char *what)
{
	CHECK(setsockopt(fd, level, name, &v, sizeof(v)) == 0, "setsockopt %s: errno %d", what, errno);
	opts[nopts++] = (struct opt){ fd, level, name, get(fd, level, name), what };
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int tcp = socket(AF_INET, SOCK_STREAM, 0);
	int lis = socket(AF_INET6, SOCK_STREAM, 0);
	int udp4 = socket(AF_INET, SOCK_DGRAM, 0);
	int udp6 = socket(AF_INET6, SOCK_DGRAM, 0);
	int ust = socket(AF_UNIX, SOCK_STREAM, 0);
	int pair[2];
	CHECK(tcp >= 0 && lis >= 0 && udp4 >= 0 && udp6 >= 0 && ust >= 0, "socket: errno %d", errno);
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) == 0, "socketpair: errno %d", errno);
	set(tcp, SOL_SOCKET, SO_SNDBUF, 60000, "tcp SO_SNDBUF");
	set(tcp, SOL_SOCKET, SO_RCVBUF, 70000, "tcp SO_RCVBUF");
	set(lis, SOL_SOCKET, SO_RCVBUF, 80000, "listener SO_RCVBUF");
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	CHECK(bind(lis, (struct sockaddr *)&a6, sizeof(a6)) == 0 && listen(lis, 8) == 0, "listen: errno %d", errno);
	set(udp4, SOL_SOCKET, SO_RCVBUF, 50000, "udp SO_RCVBUF");
	set(udp4, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
	set(udp4, IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR");
	set(udp4, IPPROTO_IP, IP_RECVTOS, 1, "IP_RECVTOS");
	set(udp4, SOL_SOCKET, SO_TIMESTAMP, 1, "SO_TIMESTAMP");
	set(udp4, SOL_SOCKET, SO_NO_CHECK, 1, "SO_NO_CHECK");
	set(udp6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
	set(udp6, IPPROTO_IPV6, IPV6_RECVERR, 1, "IPV6_RECVERR");
	set(udp6, SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS");
	set(ust, SOL_SOCKET, SO_SNDBUF, 90000, "unix SO_SNDBUF");
	int mp = socket(AF_INET, SOCK_STREAM, 262 /* IPPROTO_MPTCP */);
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a4);
	int one = 1;
	CHECK(mp >= 0 && setsockopt(mp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0, "MPTCP socket: errno %d", errno);
	CHECK(bind(mp, (struct sockaddr *)&a4, sizeof(a4)) == 0 && listen(mp, 8) == 0, "MPTCP listener: errno %d", errno);
	CHECK(getsockname(mp, (struct sockaddr *)&a4, &al) == 0, "getsockname");
	CHECK(send(pair[0], "left", 4, 0) == 4, "send: errno %d", errno);
	close(pair[0]);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		for (int k = 0; k < nopts; k++) {
			int v = get(opts[k].fd, opts[k].level, opts[k].name);
			CHECK(v == opts[k].want, "%s is %d, not %d", opts[k].what, v, opts[k].want);
		}
		/* SO_TIMESTAMPNS reads as SO_TIMESTAMP off: both flags set */
		CHECK(get(udp6, SOL_SOCKET, SO_TIMESTAMP) == 0, "SO_TIMESTAMP beside SO_TIMESTAMPNS");
		char b[8];
		ssize_t n = recv(pair[1], b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);
		CHECK(n == 4 && memcmp(b, "left", 4) == 0, "the datagram from the closed end: %zd errno %d", n, errno);
		CHECK(get(mp, SOL_SOCKET, SO_PROTOCOL) == 262, "the listener is not MPTCP");
		int c = socket(AF_INET, SOCK_STREAM, 0);
		CHECK(c >= 0 && connect(c, (struct sockaddr *)&a4, sizeof(a4)) == 0, "connect to the MPTCP listener: errno %d", errno);
		int acc = accept(mp, NULL, NULL);
		CHECK(acc >= 0, "accept: errno %d", errno);
		close(c); /* the client closes first: its port keeps the TIME_WAIT */
		close(acc);
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
