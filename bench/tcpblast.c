/* Raw loopback TCP throughput, for comparison with migration page transfer.
 *   tcpblast [MIB] [HOST]   (default 1024 MiB, 127.0.0.1)
 * Forks a sender that writes MIB MiB in 1 MiB send()s to a receiver that
 * reads them in 1 MiB recv()s; prints "bytes=<n> seconds=<s> mbps=<MB/s>"
 * measured by the receiver from accept() to EOF. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	long long total = (argc > 1 ? atoll(argv[1]) : 1024) * (long long)CHUNK;
	const char *host = argc > 2 ? argv[2] : "127.0.0.1";
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	inet_pton(AF_INET, host, &a.sin_addr);
	socklen_t al = sizeof(a);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 1) || getsockname(ls, (struct sockaddr *)&a, &al)) {
		perror("listen");
		return 1;
	}
	pid_t pid = fork();
	if (pid == 0) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(s, (struct sockaddr *)&a, sizeof(a))) {
			perror("connect");
			_exit(1);
		}
		char *buf = malloc(CHUNK);
		memset(buf, 0x5a, CHUNK);
		for (long long sent = 0; sent < total;) {
			ssize_t n = send(s, buf, total - sent < CHUNK ? total - sent : CHUNK, 0);
			if (n <= 0) {
				perror("send");
				_exit(1);
			}
			sent += n;
		}
		close(s);
		_exit(0);
	}
	int c = accept(ls, NULL, NULL);
	double t0 = now();
	char *buf = malloc(CHUNK);
	long long got = 0;
	for (;;) {
		ssize_t n = recv(c, buf, CHUNK, 0);
		if (n < 0) {
			perror("recv");
			return 1;
		}
		if (n == 0)
			break;
		got += n;
	}
	double dt = now() - t0;
	waitpid(pid, NULL, 0);
	printf("bytes=%lld seconds=%.4f mbps=%.1f\n", got, dt, got / dt / 1e6);
	return got == total ? 0 : 1;
}
