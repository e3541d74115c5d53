/* Descriptors in flight (SCM_RIGHTS) in unix socket queues, received only
 * once LOG.go exists, then checked from inside:
 *  - a stream pair S (s0 -> s1) holds plain messages and messages with
 *    descriptors, interleaved: a regular file kept open here (offset 5,
 *    same description as ours: kcmp) and the read end of a pipe (closed
 *    here, data in it); s0 (the sending socket, kept), s1 (the very socket
 *    whose queue carries it) and x0, one end of another stream pair
 *    (closed here; its own queue and its peer's hold data); the same file
 *    (closed here, offset 7) twice in one message;
 *  - a datagram pair D (d0 -> d1): plain datagrams, that same file again,
 *    a zero-length datagram with an eventfd (count 42), the write end of a
 *    pipe with a memfd (offset 3), y0, a datagram socket whose own queue
 *    carries an eventfd (nested), and last d0 itself, closed right after:
 *    only the queue holds it;
 *  - a seqpacket pair Q: a message with the kept file, a plain one;
 *  - a stream pair C whose sending end is closed after a message with the
 *    kept file: the reader gets it, then end-of-file.
 * The argument names more, comma-separated: "named": a listener on an
 * abstract name travels (closed here) on a stream pair N; once received, a
 * client connects to the name and the listener accepts it. "bound": a
 * datagram socket bound to a path gets a message with the kept file from
 * an unnamed socket, closed since. "epoll": an epoll descriptor travels on
 * N (phaul refuses to dump that).
 * Stream reads use the exact size of plain runs and a large buffer for a
 * message with descriptors, so a descriptor attached to the wrong bytes,
 * or a message that ends elsewhere, fails. Every pass before that checks
 * the queues' sizes and the kept file's offset. "SCM_CHECKED" is logged
 * once all is received and checked; OK lines go on.
 * Logs "OK <pass>". */
#include "common.h"
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#ifndef KCMP_FILE
#define KCMP_FILE 0
#endif

static int same_file(int a, int b)
{
	return syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, a, b) == 0;
}

static void send_fds(int s, const char *data, size_t len, const int *fds, int nfds)
{
	struct iovec iov = { (void *)data, len };
	char ctl[CMSG_SPACE(sizeof(int) * 8)];
	struct msghdr m;
	memset(&m, 0, sizeof(m));
	memset(ctl, 0, sizeof(ctl));
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	if (nfds) {
		m.msg_control = ctl;
		m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	CHECK(sendmsg(s, &m, 0) == (ssize_t)len, "sendmsg %s: errno %d", data, errno);
}

/* recvmsg of at most `cap` bytes: checks the data is `want` and that
 * exactly `nfds` descriptors came with it (into fds). */
static void expect(int s, size_t cap, const char *want, int *fds, int nfds, const char *where)
{
	char buf[256];
	char ctl[CMSG_SPACE(sizeof(int) * 16)];
	struct iovec iov = { buf, cap };
	struct msghdr m;
	memset(&m, 0, sizeof(m));
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = ctl;
	m.msg_controllen = sizeof(ctl);
	ssize_t n = recvmsg(s, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	CHECK(n >= 0, "%s: recvmsg for \"%s\": errno %d", where, want, errno);
	CHECK((size_t)n == strlen(want) && memcmp(buf, want, n) == 0, "%s: got \"%.*s\", want \"%s\"", where, (int)n, buf, want);
	CHECK(!(m.msg_flags & (MSG_CTRUNC | MSG_TRUNC)), "%s: \"%s\" truncated (flags %#x)", where, want, m.msg_flags);
	int got = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (int i = 0; i < k; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			CHECK(got < nfds, "%s: \"%s\" came with more than %d descriptors", where, want, nfds);
			fds[got++] = fd;
		}
	}
	CHECK(got == nfds, "%s: \"%s\" came with %d descriptors, want %d", where, want, got, nfds);
}

static void expect_empty(int s, const char *where)
{
	char b;
	ssize_t n = recv(s, &b, 1, MSG_DONTWAIT);
	CHECK(n < 0 && errno == EAGAIN, "%s: more queued than sent (recv %zd, errno %d)", where, n, errno);
}

static void read_is(int fd, const char *want, const char *what)
{
	char buf[64];
	size_t len = strlen(want);
	ssize_t n = read(fd, buf, len);
	CHECK(n == (ssize_t)len && memcmp(buf, want, len) == 0, "%s: read %zd bytes \"%.*s\", want \"%s\" (errno %d)", what, n, (int)(n > 0 ? n : 0), buf, want, errno);
}

static void write_is(int fd, const char *data, const char *what)
{
	CHECK(write(fd, data, strlen(data)) == (ssize_t)strlen(data), "%s: write: errno %d", what, errno);
}

static int make_file(const char *dir, const char *name, const char *data, int flags, off_t pos)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0, "create %s: errno %d", path, errno);
	write_is(fd, data, path);
	close(fd);
	fd = open(path, flags);
	CHECK(fd >= 0 && lseek(fd, pos, SEEK_SET) == pos, "open %s: errno %d", path, errno);
	return fd;
}

static int inq(int s)
{
	int n = -1;
	CHECK(ioctl(s, FIONREAD, &n) == 0, "FIONREAD: errno %d", errno);
	return n;
}

#define S_BYTES (5 + 4 + 16 + 5 + 5 + 3)

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char *dir = wl_dir();
	const char *letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
	int fa = make_file(dir, "scm_a", letters, O_RDWR, 5); /* kept */
	int fb = make_file(dir, "scm_b", "abcdefghijklmnopqrstuvwxyz", O_RDONLY, 7); /* closed once sent */
	int p1[2], p2[2];
	CHECK(pipe(p1) == 0 && pipe(p2) == 0, "pipe");
	write_is(p1[1], "pipe-one", "pipe 1");
	int ev = eventfd(42, 0), ev2 = eventfd(7, 0);
	int mf = memfd_create("scm", 0);
	CHECK(ev >= 0 && ev2 >= 0 && mf >= 0, "eventfd/memfd: errno %d", errno);
	write_is(mf, "memfd-data", "memfd");
	CHECK(lseek(mf, 3, SEEK_SET) == 3, "memfd lseek");

	int S[2], D[2], X[2], Y[2], Q[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, S) == 0 && socketpair(AF_UNIX, SOCK_DGRAM, 0, D) == 0 &&
		      socketpair(AF_UNIX, SOCK_STREAM, 0, X) == 0 && socketpair(AF_UNIX, SOCK_DGRAM, 0, Y) == 0 &&
		      socketpair(AF_UNIX, SOCK_SEQPACKET, 0, Q) == 0,
	      "socketpair: errno %d", errno);
	/* x0 and x1 each have data queued; y0 has an eventfd in flight */
	write_is(X[1], "to-x0", "x1");
	write_is(X[0], "to-x1", "x0");
	send_fds(Y[1], "nested", 6, &ev2, 1);
	close(ev2);

	send_fds(S[0], "hello", 5, NULL, 0);
	send_fds(S[0], "file", 4, (int[]){ fa, p1[0] }, 2);
	send_fds(S[0], "between-messages", 16, NULL, 0);
	send_fds(S[0], "socks", 5, (int[]){ S[0], S[1], X[0] }, 3);
	send_fds(S[0], "twice", 5, (int[]){ fb, fb }, 2);
	send_fds(S[0], "end", 3, NULL, 0);
	close(p1[0]);
	close(X[0]);

	send_fds(D[0], "one", 3, NULL, 0);
	send_fds(D[0], "two", 3, &fb, 1);
	send_fds(D[0], "three", 5, NULL, 0);
	send_fds(D[0], "", 0, &ev, 1);
	send_fds(D[0], "four", 4, (int[]){ p2[1], mf }, 2);
	send_fds(D[0], "five", 4, &Y[0], 1);
	send_fds(D[0], "last", 4, &D[0], 1);
	close(fb);
	close(ev);
	close(p2[1]);
	close(mf);
	close(Y[0]);
	close(D[0]);

	send_fds(Q[0], "sp-file", 7, &fa, 1);
	send_fds(Q[0], "sp-plain", 8, NULL, 0);

	const char *mode = argc > 2 ? argv[2] : "";
	int C[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, C) == 0, "socketpair: errno %d", errno);
	send_fds(C[0], "bye", 3, &fa, 1);
	close(C[0]);
	int srv = -1;
	if (strstr(mode, "bound")) {
		struct sockaddr_un a;
		memset(&a, 0, sizeof(a));
		a.sun_family = AF_UNIX;
		snprintf(a.sun_path, sizeof(a.sun_path), "%s/scm.sock", dir);
		unlink(a.sun_path);
		srv = socket(AF_UNIX, SOCK_DGRAM, 0);
		int cl = socket(AF_UNIX, SOCK_DGRAM, 0);
		CHECK(srv >= 0 && cl >= 0 && bind(srv, (struct sockaddr *)&a, sizeof(a)) == 0, "bound socket: errno %d", errno);
		CHECK(connect(cl, (struct sockaddr *)&a, sizeof(a)) == 0, "connect to the bound socket: errno %d", errno);
		send_fds(cl, "to-server", 9, &fa, 1);
		close(cl);
	}
	int N[2];
	struct sockaddr_un name;
	socklen_t name_len = 0;
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, N) == 0, "socketpair: errno %d", errno);
	if (strstr(mode, "named")) {
		memset(&name, 0, sizeof(name));
		name.sun_family = AF_UNIX;
		int l = snprintf(name.sun_path + 1, sizeof(name.sun_path) - 1, "phaul-scm-%d", getpid());
		name_len = offsetof(struct sockaddr_un, sun_path) + 1 + l;
		int ls = socket(AF_UNIX, SOCK_STREAM, 0);
		CHECK(ls >= 0 && bind(ls, (struct sockaddr *)&name, name_len) == 0 && listen(ls, 4) == 0, "listener: errno %d", errno);
		send_fds(N[0], "listener", 8, &ls, 1);
		close(ls);
	} else if (strstr(mode, "epoll")) {
		int ep = epoll_create1(0);
		CHECK(ep >= 0, "epoll_create1: errno %d", errno);
		send_fds(N[0], "epoll", 5, &ep, 1);
		close(ep);
	}

	char go[4200];
	snprintf(go, sizeof(go), "%s.go", log_path);
	int checked = 0;
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		if (!checked) {
			CHECK(inq(S[1]) == S_BYTES, "stream queue holds %d bytes, want %d", inq(S[1]), S_BYTES);
			CHECK(inq(D[1]) == 3, "first datagram has %d bytes, want 3", inq(D[1]));
			CHECK(lseek(fa, 0, SEEK_CUR) == 5, "kept file at offset %ld, want 5", (long)lseek(fa, 0, SEEK_CUR));
		}
		if (!checked && access(go, F_OK) == 0) {
			int f[4];
			/* stream */
			expect(S[1], 5, "hello", f, 0, "stream");
			expect(S[1], 200, "file", f, 2, "stream");
			int fa2 = f[0], p1r = f[1];
			CHECK(same_file(fa, fa2), "the file in flight is not the kept file's description");
			CHECK(lseek(fa2, 0, SEEK_CUR) == 5, "file in flight at offset %ld, want 5", (long)lseek(fa2, 0, SEEK_CUR));
			read_is(fa2, "FGH", "file in flight");
			CHECK(lseek(fa, 0, SEEK_CUR) == 8, "the kept file does not share the offset");
			read_is(p1r, "pipe-one", "pipe read end in flight");
			write_is(p1[1], "more", "pipe 1");
			read_is(p1r, "more", "pipe read end in flight");
			expect(S[1], 16, "between-messages", f, 0, "stream");
			expect(S[1], 200, "socks", f, 3, "stream");
			int s0 = f[0], s1 = f[1], x0 = f[2];
			CHECK(same_file(s0, S[0]), "the sending socket in flight is not s0");
			CHECK(same_file(s1, S[1]), "the receiving socket in flight is not s1");
			read_is(x0, "to-x0", "x0 (in flight) queue");
			read_is(X[1], "to-x1", "x1 queue");
			write_is(x0, "ping", "x0");
			read_is(X[1], "ping", "x1");
			write_is(X[1], "pong", "x1");
			read_is(x0, "pong", "x0");
			expect(S[1], 200, "twice", f, 2, "stream");
			int fb1 = f[0], fb2 = f[1];
			CHECK(same_file(fb1, fb2), "one file sent twice in a message came back as two");
			CHECK(lseek(fb1, 0, SEEK_CUR) == 7, "closed file in flight at offset %ld, want 7", (long)lseek(fb1, 0, SEEK_CUR));
			read_is(fb1, "hij", "closed file in flight");
			expect(S[1], 200, "end", f, 0, "stream");
			expect_empty(S[1], "stream");
			write_is(s0, "via-s0", "s0 in flight");
			read_is(S[1], "via-s0", "s1");
			write_is(S[0], "to-s1", "s0");
			read_is(s1, "to-s1", "s1 in flight");
			/* datagram */
			expect(D[1], 200, "one", f, 0, "datagram");
			expect(D[1], 200, "two", f, 1, "datagram");
			CHECK(same_file(f[0], fb1), "the file in flight on two sockets came back as two");
			CHECK(lseek(f[0], 0, SEEK_CUR) == 10, "shared offset of the closed file is %ld, want 10", (long)lseek(f[0], 0, SEEK_CUR));
			expect(D[1], 200, "three", f, 0, "datagram");
			expect(D[1], 200, "", f, 1, "datagram");
			uint64_t v = 0;
			CHECK(read(f[0], &v, 8) == 8 && v == 42, "eventfd in flight: count %lu, want 42", (unsigned long)v);
			expect(D[1], 200, "four", f, 2, "datagram");
			int p2w = f[0], mf2 = f[1];
			write_is(p2w, "via-p2", "pipe write end in flight");
			read_is(p2[0], "via-p2", "pipe 2");
			CHECK(lseek(mf2, 0, SEEK_CUR) == 3, "memfd in flight at offset %ld, want 3", (long)lseek(mf2, 0, SEEK_CUR));
			read_is(mf2, "fd-data", "memfd in flight");
			expect(D[1], 200, "five", f, 1, "datagram");
			int y0 = f[0];
			int g[1];
			expect(y0, 200, "nested", g, 1, "nested queue");
			CHECK(read(g[0], &v, 8) == 8 && v == 7, "nested eventfd: count %lu, want 7", (unsigned long)v);
			write_is(Y[1], "y", "y1");
			read_is(y0, "y", "y0 in flight");
			expect(D[1], 200, "last", f, 1, "datagram");
			int d0 = f[0];
			expect_empty(D[1], "datagram");
			write_is(d0, "back", "d0 in flight");
			read_is(D[1], "back", "d1");
			/* seqpacket */
			expect(Q[1], 200, "sp-file", f, 1, "seqpacket");
			CHECK(same_file(f[0], fa), "the file in flight on the seqpacket is not the kept one");
			expect(Q[1], 200, "sp-plain", f, 0, "seqpacket");
			expect_empty(Q[1], "seqpacket");
			expect(C[1], 200, "bye", f, 1, "pair with a closed end");
			CHECK(same_file(f[0], fa), "the file in flight on C is not the kept one");
			CHECK(recv(C[1], f, 1, MSG_DONTWAIT) == 0, "no end-of-file after the queue of a pair with a closed end");
			if (srv >= 0) {
				expect(srv, 200, "to-server", f, 1, "bound datagram socket");
				CHECK(same_file(f[0], fa), "the file in flight to the bound socket is not the kept one");
				expect_empty(srv, "bound datagram socket");
			}
			if (name_len) {
				expect(N[1], 200, "listener", f, 1, "listener pair");
				struct sockaddr_un got;
				socklen_t got_len = sizeof(got);
				CHECK(getsockname(f[0], (struct sockaddr *)&got, &got_len) == 0 && got_len == name_len &&
					      memcmp(&got, &name, name_len) == 0,
				      "the listener in flight lost its name");
				int c = socket(AF_UNIX, SOCK_STREAM, 0);
				CHECK(c >= 0 && connect(c, (struct sockaddr *)&name, name_len) == 0, "connect to the listener in flight: errno %d", errno);
				int a = accept(f[0], NULL, NULL);
				CHECK(a >= 0, "accept on the listener in flight: errno %d", errno);
				write_is(c, "hi", "client");
				read_is(a, "hi", "accepted");
				close(a);
				close(c);
			}
			checked = 1;
			wl_log("SCM_CHECKED");
		}
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
