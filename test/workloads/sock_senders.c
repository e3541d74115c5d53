/* Sender addresses of queued unix datagrams, checked from inside with
 * recvfrom. Runs in the directory of its log, so relative names land there.
 * Every pass n the receiver reads datagram n-1 of each sender, which then
 * sends datagram n, so a dump always finds one of each sender queued:
 *  - R, bound to the relative name "r.sock", gets datagrams (in this order)
 *    from: SP, bound to an absolute path; SREL, bound to a relative name;
 *    SAB, bound to an abstract name; SAUTO, autobound (an abstract name the
 *    kernel picked); SANON, never bound (no address); U, bound to the
 *    relative name "u.sock" whose file was removed (it must not come back);
 *  - SP's own queue holds a datagram from R (SP is unconnected, named);
 *  - a stream and a seqpacket pair carry a message each way (no address).
 * Every pass also checks the names (getsockname) and that "u.sock" and the
 * removed file of L, a listener on an absolute path, do not exist.
 * Set up once: R2, bound to an abstract name, holds one datagram each from
 * G (relative "g.sock", closed, file removed), GA (abstract, closed) and G2
 * (absolute path, closed, its stale file left); they are read once LOG.go
 * exists, checking their sender addresses, then "SENDERS_CHECKED" is logged.
 * Argument (comma-separated): "outside": a process outside the tree (double
 * fork; it exits once this one is gone for good) binds an abstract name and sends a
 * datagram to R3, bound to an absolute path, read with the others;
 * "refused": it also sends one to R2, which the dump must refuse.
 * Logs "OK <pass>". */
#include "common.h"
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

struct name {
	struct sockaddr_un a;
	socklen_t len;
};

static struct name path_name(const char *p)
{
	struct name n;
	memset(&n, 0, sizeof(n));
	n.a.sun_family = AF_UNIX;
	snprintf(n.a.sun_path, sizeof(n.a.sun_path), "%s", p);
	n.len = offsetof(struct sockaddr_un, sun_path) + strlen(n.a.sun_path) + 1;
	return n;
}

/* "@phaul-senders-TAG-PID" with the pid of the workload, `owner` */
static pid_t owner;

static struct name abstract_name(const char *tag)
{
	struct name n;
	memset(&n, 0, sizeof(n));
	n.a.sun_family = AF_UNIX;
	int l = snprintf(n.a.sun_path + 1, sizeof(n.a.sun_path) - 1, "phaul-senders-%s-%d", tag, (int)owner);
	n.len = offsetof(struct sockaddr_un, sun_path) + 1 + l;
	return n;
}

static int bound(const struct name *n)
{
	int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(s >= 0, "socket");
	if (n) {
		unlink(n->a.sun_path);
		CHECK(bind(s, (const struct sockaddr *)&n->a, n->len) == 0, "bind %s: errno %d", n->a.sun_path[0] ? n->a.sun_path : n->a.sun_path + 1, errno);
	}
	return s;
}

static struct name name_of(int s)
{
	struct name n;
	memset(&n, 0, sizeof(n));
	n.len = sizeof(n.a);
	CHECK(getsockname(s, (struct sockaddr *)&n.a, &n.len) == 0, "getsockname: errno %d", errno);
	return n;
}

static int same_name(const struct name *a, const struct name *b)
{
	/* an address of only a family (or none) is no name at all */
	socklen_t base = offsetof(struct sockaddr_un, sun_path);
	if (a->len <= base || b->len <= base)
		return a->len <= base && b->len <= base;
	return a->len == b->len && memcmp(a->a.sun_path, b->a.sun_path, a->len - base) == 0;
}

static const char *show(const struct name *n)
{
	static char buf[4][256];
	static int k;
	char *b = buf[k++ % 4];
	socklen_t base = offsetof(struct sockaddr_un, sun_path);
	if (n->len <= base)
		snprintf(b, 256, "(none, len %u)", n->len);
	else if (n->a.sun_path[0] == 0)
		snprintf(b, 256, "@%.*s", (int)(n->len - base - 1), n->a.sun_path + 1);
	else
		snprintf(b, 256, "%s", n->a.sun_path);
	return b;
}

static void send_to(int s, const struct name *to, const char *tag, int n)
{
	char buf[64];
	int l = snprintf(buf, sizeof(buf), "%s %d", tag, n);
	CHECK(sendto(s, buf, l, 0, (const struct sockaddr *)&to->a, to->len) == l, "%s: sendto %s: errno %d", tag, show(to), errno);
}

/* The next datagram of `s` must be "tag n" from `from`. */
static void expect(int s, const char *tag, int n, const struct name *from)
{
	char want[64], got[64];
	int l = snprintf(want, sizeof(want), "%s %d", tag, n);
	struct name f;
	memset(&f, 0, sizeof(f));
	f.len = sizeof(f.a);
	ssize_t r = recvfrom(s, got, sizeof(got), MSG_DONTWAIT, (struct sockaddr *)&f.a, &f.len);
	CHECK(r == l && memcmp(got, want, l) == 0, "%s: datagram %d: got %zd bytes '%.*s' (errno %d)", tag, n, r, (int)(r > 0 ? r : 0), got, errno);
	CHECK(same_name(&f, from), "%s: datagram %d came from %s, want %s", tag, n, show(&f), show(from));
}

static void expect_name(int s, const struct name *want, const char *what)
{
	struct name n = name_of(s);
	CHECK(same_name(&n, want), "%s: getsockname %s, want %s", what, show(&n), show(want));
}

/* A process outside the tree: binds an abstract name, sends to R3 (and to
 * R2 if `to_r2`), logs "OUTSIDER <pid>" and stays until `owner` has been
 * gone for 10 s (a dump and restore in between keep its pid) or 120 s
 * have passed. */
static void outsider(const struct name *r3, const struct name *r2, int to_r2)
{
	int ready[2];
	CHECK(pipe(ready) == 0, "pipe");
	pid_t p = fork();
	CHECK(p >= 0, "fork");
	if (p > 0) {
		close(ready[1]);
		CHECK(waitpid(p, NULL, 0) == p, "waitpid");
		char b;
		CHECK(read(ready[0], &b, 1) == 1, "outsider did not start");
		close(ready[0]);
		return;
	}
	setsid();
	if (fork() != 0)
		_exit(0);
	for (int fd = 3; fd < 1024; fd++)
		if (fd != ready[1] && fd != log_fd)
			close(fd);
	struct name me = abstract_name("out");
	int s = bound(&me);
	send_to(s, r3, "out", 1);
	if (to_r2)
		send_to(s, r2, "out", 2);
	wl_log("OUTSIDER %d", (int)getpid());
	CHECK(write(ready[1], "x", 1) == 1, "outsider ready");
	close(ready[1]);
	int gone = 0;
	for (int i = 0; i < 2400 && gone < 200; i++) {
		gone = kill(owner, 0) == 0 ? 0 : gone + 1;
		usleep(50000);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	owner = getpid();
	const char *mode = argc > 2 ? argv[2] : "";
	char *dir = wl_dir();
	CHECK(chdir(dir) == 0, "chdir %s", dir);
	char p[200];

	struct name rn = path_name("r.sock");
	int r = bound(&rn);
	snprintf(p, sizeof(p), "%s/sp.sock", dir);
	struct name spn = path_name(p);
	int sp = bound(&spn);
	struct name sreln = path_name("srel.sock");
	int srel = bound(&sreln);
	struct name sabn = abstract_name("ab");
	int sab = bound(&sabn);
	int sauto = bound(NULL);
	struct sockaddr_un fam = { .sun_family = AF_UNIX };
	CHECK(bind(sauto, (struct sockaddr *)&fam, sizeof(sa_family_t)) == 0, "autobind: errno %d", errno);
	struct name sauton = name_of(sauto);
	CHECK(sauton.a.sun_path[0] == 0 && sauton.len > offsetof(struct sockaddr_un, sun_path) + 1, "autobind gave %s", show(&sauton));
	int sanon = bound(NULL);
	struct name none = { .len = 0 };
	struct name un = path_name("u.sock");
	int u = bound(&un);
	CHECK(unlink("u.sock") == 0, "unlink u.sock");
	snprintf(p, sizeof(p), "%s/l.sock", dir);
	struct name ln = path_name(p);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(l >= 0 && bind(l, (struct sockaddr *)&ln.a, ln.len) == 0 && listen(l, 4) == 0, "listener: errno %d", errno);
	CHECK(unlink(ln.a.sun_path) == 0, "unlink l.sock");
	int st[2], sq[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st) == 0, "socketpair stream");
	CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sq) == 0, "socketpair seqpacket");

	/* R2 and the senders gone before the dump */
	struct name r2n = abstract_name("r2");
	int r2 = bound(&r2n);
	struct name gn = path_name("g.sock"), gan = abstract_name("ga");
	snprintf(p, sizeof(p), "%s/g2.sock", dir);
	struct name g2n = path_name(p);
	int g = bound(&gn), ga = bound(&gan), g2 = bound(&g2n);
	send_to(g, &r2n, "g", 1);
	send_to(ga, &r2n, "ga", 1);
	send_to(g2, &r2n, "g2", 1);
	close(g);
	close(ga);
	close(g2);
	CHECK(unlink("g.sock") == 0, "unlink g.sock");

	int outside = strstr(mode, "outside") != NULL;
	snprintf(p, sizeof(p), "%s/r3.sock", dir);
	struct name r3n = path_name(p), outn = abstract_name("out");
	int r3 = bound(&r3n);
	if (outside)
		outsider(&r3n, &r2n, strstr(mode, "refused") != NULL);

	struct {
		int s;
		const char *tag;
		const struct name *from;
	} senders[] = {
		{ sp, "sp", &spn }, { srel, "srel", &sreln }, { sab, "sab", &sabn }, { sauto, "sauto", &sauton }, { sanon, "sanon", &none }, { u, "u", &un },
	};
	const int nsenders = sizeof(senders) / sizeof(senders[0]);
	char go[4200];
	snprintf(go, sizeof(go), "%s.go", log_path);
	int checked = 0;

	wl_log("READY");
	for (int n = 1;; n++) {
		/* read first: a datagram socket takes only net.unix.max_dgram_qlen
		 * (10) datagrams from others */
		if (n > 1) {
			for (int i = 0; i < nsenders; i++)
				expect(r, senders[i].tag, n - 1, senders[i].from);
			expect(sp, "r", n - 1, &rn);
			char b[4];
			struct name f = { .len = sizeof(f.a) };
			CHECK(recvfrom(st[1], b, 1, 0, (struct sockaddr *)&f.a, &f.len) == 1 && b[0] == 's', "stream pair");
			CHECK(same_name(&f, &none), "stream pair: from %s", show(&f));
			f.len = sizeof(f.a);
			CHECK(recvfrom(sq[1], b, sizeof(b), 0, (struct sockaddr *)&f.a, &f.len) == 1 && b[0] == 'q', "seqpacket pair");
			CHECK(same_name(&f, &none), "seqpacket pair: from %s", show(&f));
		}
		for (int i = 0; i < nsenders; i++)
			send_to(senders[i].s, &rn, senders[i].tag, n);
		send_to(r, &spn, "r", n);
		CHECK(send(st[0], "s", 1, 0) == 1 && send(sq[0], "q", 1, 0) == 1, "pair send: errno %d", errno);
		expect_name(r, &rn, "R");
		expect_name(sp, &spn, "SP");
		expect_name(srel, &sreln, "SREL");
		expect_name(sab, &sabn, "SAB");
		expect_name(sauto, &sauton, "SAUTO");
		expect_name(u, &un, "U");
		expect_name(l, &ln, "L");
		expect_name(r2, &r2n, "R2");
		CHECK(access("u.sock", F_OK) != 0 && access(ln.a.sun_path, F_OK) != 0 && access("g.sock", F_OK) != 0, "a removed socket file is back");
		CHECK(access("r.sock", F_OK) == 0 && access("srel.sock", F_OK) == 0 && access(spn.a.sun_path, F_OK) == 0, "a socket file is gone");
		if (!checked && access(go, F_OK) == 0) {
			expect(r2, "g", 1, &gn);
			expect(r2, "ga", 1, &gan);
			expect(r2, "g2", 1, &g2n);
			if (strstr(mode, "refused"))
				expect(r2, "out", 2, &outn);
			if (outside)
				expect(r3, "out", 1, &outn);
			char b[8];
			CHECK(recv(r2, b, sizeof(b), MSG_DONTWAIT) < 0 && errno == EAGAIN, "R2: a datagram too many");
			CHECK(recv(r3, b, sizeof(b), MSG_DONTWAIT) < 0 && errno == EAGAIN, "R3: a datagram too many");
			CHECK(access(g2n.a.sun_path, F_OK) == 0, "the stale file of G2 is gone");
			checked = 1;
			wl_log("SENDERS_CHECKED");
		}
		wl_log("OK %d", n);
		sleep_ms(50);
	}
}
