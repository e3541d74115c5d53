/* Unix sockets. One message is always left unread in each queue between
 * passes (pass n sends message n and reads message n-1), so a dump sees
 * queued data:
 *  - stream, datagram and seqpacket socketpairs inside this process;
 *  - a stream pair shared with a child, which echoes every message back;
 *  - a datagram socket bound to a path, fed by an unnamed socket;
 *  - listeners on a path and on an abstract name, connected to every pass;
 *  - two stream pairs shut down for writing on one end (shutdown(2)), one
 *    with 3 bytes left unread: writes fail with EPIPE, the reader sees the
 *    bytes (peeked, every pass) or end-of-file. */
#include "common.h"
#include <poll.h>
#include <stddef.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static void msg(char *buf, size_t cap, const char *tag, int n, size_t *len)
{
	/* variable-length message so boundaries matter */
	size_t l = snprintf(buf, cap, "%s %d:", tag, n);
	size_t want = 40 + (n * 37) % 3000;
	while (l < want && l < cap) {
		buf[l] = 'a' + (n + l) % 26;
		l++;
	}
	*len = l;
}

static void read_exact(int fd, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = read(fd, buf + got, len - got);
		if (r < 0 && errno == EINTR)
			continue;
		CHECK(r > 0, "read: %zd errno %d", r, errno);
		got += r;
	}
}

static void expect_stream(int fd, const char *tag, int n)
{
	char want[4096], got[4096];
	size_t len;
	msg(want, sizeof(want), tag, n, &len);
	read_exact(fd, got, len);
	CHECK(memcmp(got, want, len) == 0, "%s: stream message %d differs", tag, n);
}

static void expect_packet(int fd, const char *tag, int n)
{
	char want[4096], got[4096];
	size_t len;
	msg(want, sizeof(want), tag, n, &len);
	ssize_t r = recv(fd, got, sizeof(got), MSG_DONTWAIT);
	CHECK(r == (ssize_t)len, "%s: packet %d has %zd bytes, want %zu (errno %d)", tag, n, r, len, errno);
	CHECK(memcmp(got, want, len) == 0, "%s: packet %d differs", tag, n);
}

static void send_msg(int fd, const char *tag, int n, const struct sockaddr_un *to)
{
	char buf[4096];
	size_t len;
	msg(buf, sizeof(buf), tag, n, &len);
	ssize_t r = to ? sendto(fd, buf, len, 0, (const struct sockaddr *)to, sizeof(*to)) : send(fd, buf, len, 0);
	CHECK(r == (ssize_t)len, "%s: send %d: errno %d", tag, n, errno);
}

static int listener(struct sockaddr_un *a, socklen_t len)
{
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(l >= 0, "socket");
	CHECK(bind(l, (struct sockaddr *)a, len) == 0, "bind listener: errno %d", errno);
	CHECK(listen(l, 4) == 0, "listen");
	return l;
}

static void connect_once(int l, struct sockaddr_un *a, socklen_t len, int n)
{
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(connect(c, (struct sockaddr *)a, len) == 0, "connect to own listener: errno %d", errno);
	int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	CHECK(s >= 0, "accept: errno %d", errno);
	unsigned char b = n, r = 0;
	CHECK(write(c, &b, 1) == 1 && read(s, &r, 1) == 1 && r == b, "listener roundtrip");
	close(s);
	close(c);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char *dir = wl_dir();
	int st[2], dg[2], sq[2], ch[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st) == 0, "socketpair stream");
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg) == 0, "socketpair dgram");
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sq) == 0, "socketpair seqpacket");
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, ch) == 0, "socketpair child");

	pid_t child = fork();
	CHECK(child >= 0, "fork");
	if (child == 0) {
		close(ch[0]);
		for (int n = 1;; n++) {
			char buf[4096];
			size_t len;
			msg(buf, sizeof(buf), "child", n, &len);
			char got[4096];
			read_exact(ch[1], got, len);
			if (memcmp(got, buf, len) != 0)
				FAIL("child: message %d differs", n);
			msg(buf, sizeof(buf), "echo", n, &len);
			CHECK(write(ch[1], buf, len) == (ssize_t)len, "child write");
		}
	}
	close(ch[1]);
	wl_log("CHILD %d", (int)child);

	struct sockaddr_un pa = { .sun_family = AF_UNIX }, aa = { .sun_family = AF_UNIX }, da = { .sun_family = AF_UNIX };
	snprintf(pa.sun_path, sizeof(pa.sun_path), "%s/listen.sock", dir);
	snprintf(da.sun_path, sizeof(da.sun_path), "%s/dgram.sock", dir);
	int alen = snprintf(aa.sun_path + 1, sizeof(aa.sun_path) - 1, "phaul-test-%d", getpid()) + 1;
	socklen_t aalen = offsetof(struct sockaddr_un, sun_path) + alen;
	int lp = listener(&pa, sizeof(pa));
	int la = listener(&aa, aalen);
	int dsrv = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(bind(dsrv, (struct sockaddr *)&da, sizeof(da)) == 0, "bind dgram: errno %d", errno);
	int dcli = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	int sh[2], se[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sh) == 0 && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, se) == 0, "socketpair: errno %d", errno);
	CHECK(write(sh[0], "abc", 3) == 3, "write: errno %d", errno);
	CHECK(shutdown(sh[0], SHUT_WR) == 0 && shutdown(se[0], SHUT_WR) == 0, "shutdown: errno %d", errno);

	wl_log("READY");
	for (int n = 1;; n++) {
		char three[4];
		CHECK(send(sh[0], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) == -1 && errno == EPIPE, "a unix socket shut down for writing writes (errno %d)", errno);
		CHECK(recv(sh[1], three, 4, MSG_PEEK | MSG_DONTWAIT) == 3 && memcmp(three, "abc", 3) == 0, "the bytes left before a shutdown are gone");
		CHECK(recv(se[1], three, 4, MSG_DONTWAIT) == 0, "no end-of-file after the peer shut down writing (errno %d)", errno);
		send_msg(st[0], "stream", n, NULL);
		send_msg(dg[1], "dgram", n, NULL);
		send_msg(sq[0], "seqpacket", n, NULL);
		send_msg(dcli, "bound", n, &da);
		if (n > 1) {
			expect_stream(st[1], "stream", n - 1);
			expect_packet(dg[0], "dgram", n - 1);
			expect_packet(sq[1], "seqpacket", n - 1);
			expect_packet(dsrv, "bound", n - 1);
			expect_stream(ch[0], "echo", n - 1);
		}
		send_msg(ch[0], "child", n, NULL);
		connect_once(lp, &pa, sizeof(pa), n);
		connect_once(la, &aa, aalen, n);
		struct sockaddr_un got;
		socklen_t gl = sizeof(got);
		CHECK(getsockname(lp, (struct sockaddr *)&got, &gl) == 0 && strcmp(got.sun_path, pa.sun_path) == 0, "path listener name changed");
		gl = sizeof(got);
		CHECK(getsockname(la, (struct sockaddr *)&got, &gl) == 0 && gl == aalen && memcmp(got.sun_path, aa.sun_path, alen) == 0,
		      "abstract listener name changed");
		CHECK(waitpid(child, NULL, WNOHANG) == 0, "child exited");
		wl_log("OK %d", n);
		sleep_ms(100);
	}
}
