/* An established TCP connection to a peer outside the dumped tree:
 * argv: LOG PORT [4|6]. Both sides send a stream of little-endian u32
 * counters (0, 1, 2, ...) and check the other's stream. While LOG.hold
 * exists the workload stops reading and writes until the socket is full
 * (EAGAIN), then logs "HELD"; so a dump sees data queued both ways. */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

/* byte i of each stream is byte i%4 (little endian) of counter i/4 */
static uint64_t in_pos, out_pos;

static unsigned char stream_byte(uint64_t i)
{
	uint32_t v = (uint32_t)(i / 4);
	return (v >> (8 * (i % 4))) & 0xff;
}

static void consume(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++, in_pos++)
		CHECK(p[i] == stream_byte(in_pos), "peer stream byte %llu is %u, expected %u", (unsigned long long)in_pos, p[i],
		      stream_byte(in_pos));
}

/* send up to max bytes of the stream; returns bytes sent, 0 when the socket is full */
static long pump_out(int fd, long max)
{
	unsigned char chunk[16384];
	long total = 0;
	while (total < max) {
		for (size_t j = 0; j < sizeof(chunk); j++)
			chunk[j] = stream_byte(out_pos + j);
		ssize_t w = send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && errno == EAGAIN)
			return total;
		CHECK(w >= 0, "send: errno %d", errno);
		out_pos += w;
		total += w;
		if (w < (ssize_t)sizeof(chunk))
			return total;
	}
	return total;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(argc >= 3, "usage: LOG PORT [4|6]");
	int port = atoi(argv[2]);
	int v6 = argc > 3 && atoi(argv[3]) == 6;
	char hold[4200];
	snprintf(hold, sizeof(hold), "%s.hold", log_path);
	int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0, "socket");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* a small send buffer keeps the dumped queue (and the image) small */
	int sndbuf = 32768;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	if (v6) {
		struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_LOOPBACK_INIT };
		CHECK(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect: errno %d", errno);
	} else {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		CHECK(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "connect: errno %d", errno);
	}
	fcntl(fd, F_SETFL, O_NONBLOCK);
	wl_log("READY");
	int n = 0, held = 0;
	uint64_t last_ok = mono_ns();
	for (;;) {
		struct stat st;
		int holding = stat(hold, &st) == 0;
		if (holding) {
			if (!held) {
				/* fill the connection until the kernel says no */
				while (pump_out(fd, 1 << 20) > 0)
					;
				held = 1;
				wl_log("HELD in=%llu out=%llu", (unsigned long long)in_pos, (unsigned long long)out_pos);
			}
			sleep_ms(20);
			continue;
		}
		held = 0;
		struct pollfd p = { fd, POLLIN, 0 };
		poll(&p, 1, 20);
		CHECK(!(p.revents & (POLLERR | POLLHUP)), "connection broken (revents %x)", p.revents);
		for (;;) {
			unsigned char buf[65536];
			ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				break;
			CHECK(r != 0, "peer closed the connection");
			CHECK(r > 0, "recv: errno %d", errno);
			consume(buf, r);
		}
		pump_out(fd, 8192);
		if (mono_ns() - last_ok > 100000000ull) {
			last_ok = mono_ns();
			wl_log("OK %d in=%llu out=%llu", ++n, (unsigned long long)in_pos, (unsigned long long)out_pos);
		}
	}
}
