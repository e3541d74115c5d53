/* A TCP connect still in flight (SYN_SENT) while the process is moved.
 *   sock_connecting LOG PORT
 * A thread makes a blocking connect to 127.0.0.1:PORT (the test drops the
 * SYNs to that port until it lets them through); the main thread logs
 * "LOCAL <port>" (the local port the connect is bound to) once, then
 * "OK <n>" every 100 ms. When the connect returns, the thread checks that
 * the local port is the same, sends one byte, expects it echoed back and
 * logs "CONNECTED <port>"; any failure is a FAIL. */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

static int sock;
static int port;

static int local_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	if (getsockname(sock, (struct sockaddr *)&a, &len) < 0)
		FAIL("getsockname: errno %d", errno);
	return ntohs(a.sin_port);
}

static void *connector(void *arg)
{
	(void)arg;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int r;
	while ((r = connect(sock, (struct sockaddr *)&a, sizeof(a))) < 0 && errno == EINTR)
		;
	if (r < 0)
		FAIL("connect to port %d: errno %d", port, errno);
	int lp = local_port();
	char c = 'x';
	if (write(sock, &c, 1) != 1)
		FAIL("write: errno %d", errno);
	c = 0;
	if (read(sock, &c, 1) != 1 || c != 'x')
		FAIL("echo: got %d (errno %d)", c, errno);
	wl_log("CONNECTED %d", lp);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(argc > 2, "usage: sock_connecting LOG PORT");
	port = atoi(argv[2]);
	sock = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(sock >= 0, "socket: errno %d", errno);
	pthread_t t;
	CHECK(pthread_create(&t, NULL, connector, NULL) == 0, "pthread_create");
	int lp = 0;
	for (int i = 0; i < 100 && !lp; i++) {
		struct timespec ts = { 0, 10000000L };
		nanosleep(&ts, NULL);
		lp = local_port();
	}
	CHECK(lp != 0, "the connect never bound a local port");
	wl_log("LOCAL %d", lp);
	wl_log("READY");
	for (unsigned long n = 1;; n++) {
		struct timespec ts = { 0, 100000000L };
		nanosleep(&ts, NULL);
		if (local_port() != lp)
			FAIL("local port changed: %d != %d", local_port(), lp);
		wl_log("OK %lu", n);
	}
}
