/* TCP connections inside the process, each end held by it: one fully open
 * (bytes both ways every pass), one half-closed (the client shut down its
 * sending side: the client is in FIN_WAIT2, the server end in CLOSE_WAIT).
 * Each pass: the server end still sends to the client, which reads it; the
 * server end reads end-of-file; the client cannot write (EPIPE); the open
 * pair carries a byte each way. Logs "OK <pass>". */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

static void pair(int l, struct sockaddr_in *a, int *c, int *s)
{
	*c = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(*c >= 0 && connect(*c, (struct sockaddr *)a, sizeof(*a)) == 0, "connect: errno %d", errno);
	*s = accept(l, NULL, NULL);
	CHECK(*s >= 0, "accept: errno %d", errno);
}

static int state(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	CHECK(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0, "TCP_INFO");
	return ti.tcpi_state;
}

static void xfer(int from, int to, unsigned char b)
{
	CHECK(write(from, &b, 1) == 1, "write: errno %d", errno);
	struct pollfd p = { .fd = to, .events = POLLIN };
	CHECK(poll(&p, 1, 5000) == 1, "nothing to read within 5 s");
	unsigned char got = 0;
	CHECK(read(to, &got, 1) == 1 && got == b, "read %u, want %u (errno %d)", got, b, errno);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	CHECK(l >= 0 && bind(l, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(l, 4) == 0, "listen");
	CHECK(getsockname(l, (struct sockaddr *)&a, &al) == 0, "getsockname");
	int oc, os, hc, hs;
	pair(l, &a, &oc, &os);
	pair(l, &a, &hc, &hs);
	CHECK(shutdown(hc, SHUT_WR) == 0, "shutdown");
	for (int k = 0; k < 100 && state(hs) != TCP_CLOSE_WAIT; k++)
		sleep_ms(10);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		xfer(oc, os, (unsigned char)i);
		xfer(os, oc, (unsigned char)(i + 1));
		xfer(hs, hc, (unsigned char)(i + 2));
		char c;
		CHECK(read(hs, &c, 1) == 0, "the half-closed server end does not read end-of-file");
		errno = 0;
		CHECK(write(hc, "x", 1) == -1 && errno == EPIPE, "the client wrote after its shutdown (errno %d)", errno);
		CHECK(state(hc) == TCP_FIN_WAIT2, "client state %d, not FIN_WAIT2", state(hc));
		CHECK(state(hs) == TCP_CLOSE_WAIT, "server end state %d, not CLOSE_WAIT", state(hs));
		CHECK(state(oc) == TCP_ESTABLISHED && state(os) == TCP_ESTABLISHED, "open pair not established");
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
