/* Classic socket filters (SO_ATTACH_FILTER) on each socket kind, one locked
 * (SO_LOCK_FILTER). Every pass checks from inside that each filter still
 * acts and reads back (SO_GET_FILTER) as attached:
 * - UDP: a filter dropping 4-byte datagrams, locked: of "drop" and "keep!"
 *   only "keep!" arrives, and the filter cannot be detached (EPERM);
 * - unix datagram pair: a filter dropping datagrams under 5 bytes on one end;
 * - TCP (both ends of a connection here): an accept-all program on one end,
 *   read back, with data still flowing through it;
 * - a netlink (route) socket and a packet socket: the program reads back.
 * Logs "OK <pass>".
 * With argument "bpf": a UDP socket holds an eBPF filter (SO_ATTACH_BPF)
 * instead, which phaul cannot read back and must refuse; logs "OK <pass>". */
#include "common.h"
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#ifndef SO_LOCK_FILTER
#define SO_LOCK_FILTER 44
#endif

/* A UDP filter sees the 8-byte header too: 12 is a 4-byte datagram. */
static struct sock_filter drop4[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 12, 0, 1),
	BPF_STMT(BPF_RET | BPF_K, 0),
	BPF_STMT(BPF_RET | BPF_K, 0xffff),
};
static struct sock_filter under5[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
	BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 5, 1, 0),
	BPF_STMT(BPF_RET | BPF_K, 0),
	BPF_STMT(BPF_RET | BPF_K, 0x7fff),
};
static struct sock_filter all[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
	BPF_STMT(BPF_RET | BPF_K, 0x40000),
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void attach(int s, struct sock_filter *code, unsigned n)
{
	struct sock_fprog prog = { n, code };
	CHECK(setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) == 0, "SO_ATTACH_FILTER: errno %d", errno);
}

/* The filter reads back as attached (SO_GET_FILTER counts instructions). */
static void same_filter(const char *what, int s, struct sock_filter *code, unsigned n, int locked)
{
	struct sock_filter got[16];
	socklen_t len = 16;
	CHECK(getsockopt(s, SOL_SOCKET, SO_GET_FILTER, got, &len) == 0, "%s: SO_GET_FILTER: errno %d", what, errno);
	CHECK(len == n && memcmp(got, code, n * sizeof(*code)) == 0, "%s: filter reads back with %u instructions, want %u", what, len, n);
	int v = -1;
	len = sizeof(v);
	CHECK(getsockopt(s, SOL_SOCKET, SO_LOCK_FILTER, &v, &len) == 0 && v == locked, "%s: SO_LOCK_FILTER is %d, want %d", what, v, locked);
}

/* An eBPF socket filter that passes everything. */
static void ebpf_only(void)
{
	struct bpf_insn prog[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = -1 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	union bpf_attr at;
	memset(&at, 0, sizeof(at));
	at.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	at.insns = (uint64_t)(uintptr_t)prog;
	at.insn_cnt = 2;
	at.license = (uint64_t)(uintptr_t) "GPL";
	int pfd = syscall(SYS_bpf, BPF_PROG_LOAD, &at, sizeof(at));
	CHECK(pfd >= 0, "BPF_PROG_LOAD: errno %d", errno);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	CHECK(setsockopt(s, SOL_SOCKET, SO_ATTACH_BPF, &pfd, sizeof(pfd)) == 0, "SO_ATTACH_BPF: errno %d", errno);
	close(pfd);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc > 2 && strcmp(argv[2], "bpf") == 0)
		ebpf_only();
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t al = sizeof(a);

	int u = socket(AF_INET, SOCK_DGRAM, 0), uc = socket(AF_INET, SOCK_DGRAM, 0);
	CHECK(bind(u, (void *)&a, sizeof(a)) == 0 && getsockname(u, (void *)&a, &al) == 0, "udp bind: errno %d", errno);
	struct sockaddr_in ua = a;
	attach(u, drop4, N(drop4));
	int one = 1;
	CHECK(setsockopt(u, SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof(one)) == 0, "SO_LOCK_FILTER: errno %d", errno);

	int x[2];
	CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, x) == 0, "socketpair: errno %d", errno);
	attach(x[1], under5, N(under5));

	a.sin_port = 0;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	al = sizeof(a);
	CHECK(bind(l, (void *)&a, sizeof(a)) == 0 && listen(l, 1) == 0 && getsockname(l, (void *)&a, &al) == 0, "listen: errno %d", errno);
	int c = socket(AF_INET, SOCK_STREAM, 0);
	CHECK(connect(c, (void *)&a, sizeof(a)) == 0, "connect: errno %d", errno);
	int t = accept(l, NULL, NULL);
	CHECK(t >= 0, "accept: errno %d", errno);
	close(l);
	attach(t, all, N(all));

	int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	CHECK(nl >= 0, "netlink socket: errno %d", errno);
	attach(nl, under5, N(under5));
	int pk = socket(AF_PACKET, SOCK_DGRAM, 0); /* protocol 0: receives nothing */
	CHECK(pk >= 0, "packet socket: errno %d", errno);
	attach(pk, drop4, N(drop4));
	CHECK(setsockopt(pk, SOL_SOCKET, SO_LOCK_FILTER, &one, sizeof(one)) == 0, "SO_LOCK_FILTER: errno %d", errno);

	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		char b[16];
		same_filter("udp", u, drop4, N(drop4), 1);
		errno = 0;
		CHECK(setsockopt(u, SOL_SOCKET, SO_DETACH_FILTER, &one, sizeof(one)) == -1 && errno == EPERM, "udp: a locked filter was detached (errno %d)", errno);
		sendto(uc, "drop", 4, 0, (void *)&ua, sizeof(ua));
		sendto(uc, "keep!", 5, 0, (void *)&ua, sizeof(ua));
		ssize_t n = recv(u, b, sizeof(b), 0);
		CHECK(n == 5, "udp: got %zd bytes: the filter let a short datagram through", n);

		same_filter("unix", x[1], under5, N(under5), 0);
		CHECK(send(x[0], "abc", 3, 0) == 3 && send(x[0], "hello", 5, 0) == 5, "unix send: errno %d", errno);
		n = recv(x[1], b, sizeof(b), 0);
		CHECK(n == 5 && memcmp(b, "hello", 5) == 0, "unix: got %zd bytes: the filter let a short datagram through", n);

		same_filter("tcp", t, all, N(all), 0);
		CHECK(send(c, "ping", 4, 0) == 4, "tcp send: errno %d", errno);
		n = recv(t, b, 4, MSG_WAITALL);
		CHECK(n == 4 && memcmp(b, "ping", 4) == 0, "tcp: got %zd bytes", n);

		same_filter("netlink", nl, under5, N(under5), 0);
		same_filter("packet", pk, drop4, N(drop4), 1);

		same_filter("netlink", nl, under5, N(under5), 0);
		same_filter("packet", pk, drop4, N(drop4), 1);

		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
