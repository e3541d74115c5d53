/* Netlink sockets, checked from inside each pass:
 *  - NETLINK_ROUTE, autobound, multicast groups RTMGRP_LINK | RTMGRP_IPV4_IFADDR
 *    by bind and group 33 by NETLINK_ADD_MEMBERSHIP, NETLINK_EXT_ACK,
 *    NETLINK_GET_STRICT_CHK, NETLINK_NO_ENOBUFS and a forced 1 MiB receive
 *    buffer: an RTM_GETLINK dump is answered (to our port id, "lo" in it);
 *  - NETLINK_GENERIC bound to a chosen port id: CTRL_CMD_GETFAMILY "nlctrl"
 *    is answered;
 *  - NETLINK_KOBJECT_UEVENT (SOCK_DGRAM) bound to group 1;
 *  - two NETLINK_USERSOCK sockets: a receiver bound to a chosen port id and
 *    group 5 (plus group 20 by setsockopt), a sender connected to it. The
 *    receiver must get a multicast to group 5 and a message sent on the
 *    connection, both from the sender's port id.
 * Port ids, memberships (getsockname, NETLINK_LIST_MEMBERSHIPS), peers and
 * options must not change. Messages queued at a dump are lost (documented):
 * a request or message that gets no answer is sent again once ("RETRY").
 * Logs "OK <pass>". */
#include "common.h"
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sys/socket.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

static int rt, gen, uev, urx, utx;
static uint32_t rt_port, gen_port, urx_port, utx_port, uev_port;
static uint32_t seq = 1;

static void name_of(int fd, struct sockaddr_nl *a, int peer)
{
	socklen_t l = sizeof(*a);
	memset(a, 0, sizeof(*a));
	int r = peer ? getpeername(fd, (struct sockaddr *)a, &l) : getsockname(fd, (struct sockaddr *)a, &l);
	CHECK(r == 0 && a->nl_family == AF_NETLINK, "get%sname: errno %d", peer ? "peer" : "sock", errno);
}

static void memberships(int fd, uint32_t out[4])
{
	memset(out, 0, 16);
	socklen_t l = 16;
	CHECK(getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, out, &l) == 0, "NETLINK_LIST_MEMBERSHIPS: errno %d", errno);
}

static int opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	CHECK(getsockopt(fd, level, name, &v, &l) == 0, "getsockopt(%d, %d): errno %d", level, name, errno);
	return v;
}

static void bind_nl(int fd, uint32_t port, uint32_t groups)
{
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = port, .nl_groups = groups };
	CHECK(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "bind netlink: errno %d", errno);
}

static int wait_in(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r;
	do
		r = poll(&p, 1, ms);
	while (r < 0 && errno == EINTR);
	return r == 1;
}

/* One RTM_GETLINK dump: 1 if answered in full (with "lo"), 0 if no answer came. */
static int getlink(void)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = { { sizeof(req), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, ++seq, 0 }, { .ifi_family = AF_UNSPEC } };
	CHECK(send(rt, &req, sizeof(req), 0) == (ssize_t)sizeof(req), "send RTM_GETLINK: errno %d", errno);
	static char buf[65536];
	int lo = 0;
	for (;;) {
		if (!wait_in(rt, 1000))
			return 0;
		ssize_t n = recv(rt, buf, sizeof(buf), 0);
		CHECK(n > 0, "recv route: errno %d", errno);
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != seq)
				continue; /* the answer to a request whose dump was cut by a move */
			CHECK(h->nlmsg_pid == rt_port, "route answer to port %u, ours is %u", h->nlmsg_pid, rt_port);
			if (h->nlmsg_type == NLMSG_DONE) {
				CHECK(lo, "RTM_GETLINK dump without lo");
				return 1;
			}
			CHECK(h->nlmsg_type == RTM_NEWLINK, "route answer type %d", h->nlmsg_type);
			struct ifinfomsg *ifi = NLMSG_DATA(h);
			int alen = h->nlmsg_len - NLMSG_LENGTH(sizeof(*ifi));
			for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, alen); a = RTA_NEXT(a, alen))
				if (a->rta_type == IFLA_IFNAME && strcmp(RTA_DATA(a), "lo") == 0)
					lo = 1;
		}
	}
}

/* CTRL_CMD_GETFAMILY "nlctrl": 1 if answered with its family id. */
static int getfamily(void)
{
	struct {
		struct nlmsghdr h;
		struct genlmsghdr g;
		struct nlattr a;
		char name[8];
	} req = { { sizeof(req), GENL_ID_CTRL, NLM_F_REQUEST, ++seq, 0 }, { .cmd = CTRL_CMD_GETFAMILY, .version = 1 }, { 4 + 7, CTRL_ATTR_FAMILY_NAME }, "nlctrl" };
	CHECK(send(gen, &req, sizeof(req), 0) == (ssize_t)sizeof(req), "send CTRL_CMD_GETFAMILY: errno %d", errno);
	static char buf[16384];
	for (;;) {
		if (!wait_in(gen, 1000))
			return 0;
		ssize_t n = recv(gen, buf, sizeof(buf), 0);
		CHECK(n > 0, "recv generic: errno %d", errno);
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != seq)
				continue;
			CHECK(h->nlmsg_pid == gen_port, "generic answer to port %u, ours is %u", h->nlmsg_pid, gen_port);
			CHECK(h->nlmsg_type == GENL_ID_CTRL, "generic answer type %d", h->nlmsg_type);
			struct genlmsghdr *g = NLMSG_DATA(h);
			CHECK(g->cmd == CTRL_CMD_NEWFAMILY, "generic answer cmd %d", g->cmd);
			int alen = h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
			for (struct nlattr *a = (struct nlattr *)((char *)g + GENL_HDRLEN); alen >= (int)sizeof(*a) && a->nla_len >= sizeof(*a) && a->nla_len <= alen;
			     alen -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len)))
				if (a->nla_type == CTRL_ATTR_FAMILY_ID && *(uint16_t *)(a + 1) == GENL_ID_CTRL)
					return 1;
			FAIL("nlctrl answer without its family id");
		}
	}
}

/* Multicast to group 5 and a message on the connection: 1 if both arrived. */
static int usersock(uint64_t pass)
{
	struct {
		struct nlmsghdr h;
		uint64_t pass;
	} m = { { sizeof(m), NLMSG_MIN_TYPE, 0, ++seq, 0 }, pass };
	struct sockaddr_nl to = { .nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = 1 << 4 };
	/* No kernel socket takes the unicast part (port 0): ECONNREFUSED after the multicast. */
	ssize_t r = sendto(utx, &m, sizeof(m), 0, (struct sockaddr *)&to, sizeof(to));
	CHECK(r == (ssize_t)sizeof(m) || errno == ECONNREFUSED, "multicast send: errno %d", errno);
	uint32_t mseq = seq;
	m.h.nlmsg_seq = ++seq;
	CHECK(send(utx, &m, sizeof(m), 0) == (ssize_t)sizeof(m), "send on the connection: errno %d", errno);
	int got_m = 0, got_u = 0;
	while (!(got_m && got_u)) {
		if (!wait_in(urx, 1000))
			return 0;
		struct sockaddr_nl from;
		socklen_t fl = sizeof(from);
		char buf[256];
		ssize_t n = recvfrom(urx, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
		CHECK(n == (ssize_t)sizeof(m), "usersock message of %zd bytes (errno %d)", n, errno);
		struct nlmsghdr *h = (struct nlmsghdr *)buf;
		CHECK(from.nl_pid == utx_port, "usersock message from port %u, sender is %u", from.nl_pid, utx_port);
		if (h->nlmsg_seq == mseq) {
			CHECK(from.nl_groups == 1 << 4, "multicast for groups %#x", from.nl_groups);
			got_m = 1;
		} else if (h->nlmsg_seq == seq) {
			CHECK(from.nl_groups == 0, "unicast for groups %#x", from.nl_groups);
			got_u = 1;
		}
	}
	return 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int one = 1;
	rt = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	gen = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	uev = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
	urx = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_USERSOCK);
	utx = socket(AF_NETLINK, SOCK_RAW, NETLINK_USERSOCK);
	CHECK(rt >= 0 && gen >= 0 && uev >= 0 && urx >= 0 && utx >= 0, "socket(AF_NETLINK): errno %d", errno);

	bind_nl(rt, 0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR);
	int g33 = 33;
	CHECK(setsockopt(rt, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g33, sizeof(g33)) == 0, "add group 33: errno %d", errno);
	CHECK(setsockopt(rt, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one)) == 0, "NETLINK_EXT_ACK");
	CHECK(setsockopt(rt, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof(one)) == 0, "NETLINK_GET_STRICT_CHK");
	CHECK(setsockopt(rt, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one)) == 0, "NETLINK_NO_ENOBUFS");
	int big = 1 << 20;
	CHECK(setsockopt(rt, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) == 0, "SO_RCVBUFFORCE: errno %d", errno);

	uint32_t mine = 0x40000000u | (uint32_t)getpid();
	bind_nl(gen, mine, 0);
	bind_nl(uev, 0, 1);
	bind_nl(urx, mine + 1, 1 << 4);
	int g20 = 20;
	CHECK(setsockopt(urx, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g20, sizeof(g20)) == 0, "add group 20: errno %d", errno);
	struct sockaddr_nl to = { .nl_family = AF_NETLINK, .nl_pid = mine + 1 };
	CHECK(connect(utx, (struct sockaddr *)&to, sizeof(to)) == 0, "connect usersock: errno %d", errno);

	struct sockaddr_nl a[5], b;
	int fds[5] = { rt, gen, uev, urx, utx };
	for (int i = 0; i < 5; i++)
		name_of(fds[i], &a[i], 0);
	rt_port = a[0].nl_pid, gen_port = a[1].nl_pid, uev_port = a[2].nl_pid, urx_port = a[3].nl_pid, utx_port = a[4].nl_pid;
	CHECK(rt_port != 0 && gen_port == mine && uev_port != 0 && urx_port == mine + 1 && utx_port != 0, "port ids %u %u %u %u %u", rt_port, gen_port, uev_port, urx_port, utx_port);
	uint32_t m0[5][4];
	for (int i = 0; i < 5; i++)
		memberships(fds[i], m0[i]);
	CHECK(m0[0][0] == (RTMGRP_LINK | RTMGRP_IPV4_IFADDR) && m0[0][1] == 1, "route memberships %#x %#x", m0[0][0], m0[0][1]);
	CHECK(m0[3][0] == (1u << 4 | 1u << 19), "usersock memberships %#x", m0[3][0]);
	int rcvbuf = opt(rt, SOL_SOCKET, SO_RCVBUF);

	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		for (int i = 0; i < 5; i++) {
			name_of(fds[i], &b, 0);
			CHECK(b.nl_pid == a[i].nl_pid && b.nl_groups == a[i].nl_groups, "socket %d: port %u groups %#x, were %u %#x", i, b.nl_pid, b.nl_groups, a[i].nl_pid, a[i].nl_groups);
			uint32_t m[4];
			memberships(fds[i], m);
			CHECK(memcmp(m, m0[i], sizeof(m)) == 0, "socket %d: memberships %#x %#x, were %#x %#x", i, m[0], m[1], m0[i][0], m0[i][1]);
		}
		name_of(utx, &b, 1);
		CHECK(b.nl_pid == urx_port, "usersock sender connected to %u", b.nl_pid);
		CHECK(opt(rt, SOL_NETLINK, NETLINK_EXT_ACK) == 1 && opt(rt, SOL_NETLINK, NETLINK_GET_STRICT_CHK) == 1 && opt(rt, SOL_NETLINK, NETLINK_NO_ENOBUFS) == 1,
		      "route socket options lost");
		CHECK(opt(rt, SOL_NETLINK, NETLINK_PKTINFO) == 0 && opt(gen, SOL_NETLINK, NETLINK_EXT_ACK) == 0, "options that were off are on");
		CHECK(opt(rt, SOL_SOCKET, SO_RCVBUF) == rcvbuf, "route SO_RCVBUF %d, was %d", opt(rt, SOL_SOCKET, SO_RCVBUF), rcvbuf);
		CHECK(opt(rt, SOL_SOCKET, SO_TYPE) == SOCK_RAW && opt(uev, SOL_SOCKET, SO_TYPE) == SOCK_DGRAM, "socket types");
		CHECK(opt(uev, SOL_SOCKET, SO_PROTOCOL) == NETLINK_KOBJECT_UEVENT && opt(gen, SOL_SOCKET, SO_PROTOCOL) == NETLINK_GENERIC, "protocols");
		CHECK(fcntl(uev, F_GETFL) & O_NONBLOCK, "uevent socket lost O_NONBLOCK");
		CHECK(!(fcntl(utx, F_GETFD) & FD_CLOEXEC) && (fcntl(rt, F_GETFD) & FD_CLOEXEC), "FD_CLOEXEC");
		if (!getlink()) {
			wl_log("RETRY route");
			CHECK(getlink(), "no answer to RTM_GETLINK");
		}
		if (!getfamily()) {
			wl_log("RETRY generic");
			CHECK(getfamily(), "no answer to CTRL_CMD_GETFAMILY");
		}
		if (!usersock(pass)) {
			wl_log("RETRY usersock");
			CHECK(usersock(pass), "usersock messages did not arrive");
		}
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(20);
	}
}
