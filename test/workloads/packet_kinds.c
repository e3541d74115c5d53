/* Packet sockets on the loopback interface, checked from inside each pass:
 *  - "tap": SOCK_RAW opened for ETH_P_ALL, bound to lo for ethertype 0x88b5,
 *    with PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VERSION TPACKET_V2 and a
 *    multicast membership (PACKET_ADD_MEMBERSHIP) for 01:00:5e:7f:xx:xx;
 *  - "dgram": SOCK_DGRAM bound to lo for ethertype 0x88b6, with
 *    PACKET_IGNORE_OUTGOING.
 * The dgram socket sends a frame of type 0x88b5 to the multicast address:
 * the tap must receive it whole (Ethernet header, payload, aux data, lo,
 * PACKET_MULTICAST). The tap sends a raw frame of type 0x88b6: the dgram
 * socket must receive its payload. Bindings, options and the membership
 * (in /proc/net/dev_mcast) must not change. Frames are told apart from
 * other processes' by the pid in the payload. Frames queued at a dump are
 * lost (documented): one that does not arrive is sent again once ("RETRY").
 *   packet_kinds LOG [ring]
 * With "ring" the tap also gets a PACKET_RX_RING (which phaul refuses).
 * Logs "OK <pass>". */
#include "common.h"
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define TYPE_TAP 0x88b5
#define TYPE_DGRAM 0x88b6

static int tap, dg, lo;
static unsigned char mc[6] = { 0x01, 0x00, 0x5e, 0x7f, 0, 0 };

static int opt(int fd, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	CHECK(getsockopt(fd, SOL_PACKET, name, &v, &l) == 0, "getsockopt(SOL_PACKET, %d): errno %d", name, errno);
	return v;
}

static void check_bound(int fd, int type, const char *what)
{
	struct sockaddr_ll a;
	socklen_t l = sizeof(a);
	memset(&a, 0, sizeof(a));
	CHECK(getsockname(fd, (struct sockaddr *)&a, &l) == 0, "getsockname: errno %d", errno);
	CHECK(a.sll_ifindex == lo && ntohs(a.sll_protocol) == type, "%s bound to ifindex %d type %#x, not lo (%d) %#x", what, a.sll_ifindex, ntohs(a.sll_protocol), lo, type);
}

static int membership_listed(void)
{
	char buf[65536], want[16];
	ssize_t n = read_file("/proc/net/dev_mcast", buf, sizeof(buf) - 1);
	CHECK(n > 0, "/proc/net/dev_mcast");
	buf[n] = 0;
	snprintf(want, sizeof(want), "%02x%02x%02x%02x%02x%02x", mc[0], mc[1], mc[2], mc[3], mc[4], mc[5]);
	for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
		int idx;
		char name[IF_NAMESIZE + 1], addr[64];
		unsigned users, global;
		if (sscanf(l, "%d %16s %u %u %63s", &idx, name, &users, &global, addr) == 5 && idx == lo && strcmp(addr, want) == 0)
			return 1;
	}
	return 0;
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

/* dgram -> tap: 1 if the tap got the frame. */
static int to_tap(uint64_t pass)
{
	char payload[64];
	int plen = snprintf(payload, sizeof(payload), "phaul %d tap %llu", getpid(), (unsigned long long)pass) + 1;
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(TYPE_TAP), .sll_ifindex = lo, .sll_halen = 6 };
	memcpy(to.sll_addr, mc, 6);
	CHECK(sendto(dg, payload, plen, 0, (struct sockaddr *)&to, sizeof(to)) == plen, "send to the tap: errno %d", errno);
	for (;;) {
		if (!wait_in(tap, 1000))
			return 0;
		unsigned char frame[2048];
		char cbuf[256];
		struct sockaddr_ll from;
		struct iovec iov = { frame, sizeof(frame) };
		struct msghdr mh = { .msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
		ssize_t n = recvmsg(tap, &mh, 0);
		CHECK(n >= 14, "tap recvmsg: %zd errno %d", n, errno);
		if (n < 14 + plen || memcmp(frame + 14, payload, plen) != 0)
			continue; /* another process's frame, or one of an earlier pass */
		CHECK(memcmp(frame, mc, 6) == 0, "tap frame to %02x:%02x:..., not the multicast address", frame[0], frame[1]);
		CHECK(frame[12] == (TYPE_TAP >> 8) && frame[13] == (TYPE_TAP & 0xff), "tap frame type %02x%02x", frame[12], frame[13]);
		CHECK(from.sll_ifindex == lo && ntohs(from.sll_protocol) == TYPE_TAP, "tap frame from ifindex %d type %#x", from.sll_ifindex, ntohs(from.sll_protocol));
		CHECK(from.sll_pkttype == PACKET_MULTICAST, "tap frame of packet type %d", from.sll_pkttype);
		int aux = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_PACKET && c->cmsg_type == PACKET_AUXDATA)
				aux = ((struct tpacket_auxdata *)CMSG_DATA(c))->tp_len == (unsigned)n;
		CHECK(aux, "tap frame without PACKET_AUXDATA");
		return 1;
	}
}

/* tap -> dgram: 1 if the dgram socket got the payload. */
static int to_dgram(uint64_t pass)
{
	unsigned char frame[128];
	memset(frame, 0, 12); /* to lo's own address */
	frame[12] = TYPE_DGRAM >> 8, frame[13] = TYPE_DGRAM & 0xff;
	int plen = snprintf((char *)frame + 14, sizeof(frame) - 14, "phaul %d dgram %llu", getpid(), (unsigned long long)pass) + 1;
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = lo };
	CHECK(sendto(tap, frame, 14 + plen, 0, (struct sockaddr *)&to, sizeof(to)) == 14 + plen, "send to the dgram socket: errno %d", errno);
	for (;;) {
		if (!wait_in(dg, 1000))
			return 0;
		char buf[2048];
		struct sockaddr_ll from;
		socklen_t fl = sizeof(from);
		ssize_t n = recvfrom(dg, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
		CHECK(n > 0, "dgram recv: errno %d", errno);
		if (n != plen || memcmp(buf, frame + 14, plen) != 0)
			continue;
		CHECK(from.sll_ifindex == lo && ntohs(from.sll_protocol) == TYPE_DGRAM, "dgram frame from ifindex %d type %#x", from.sll_ifindex, ntohs(from.sll_protocol));
		return 1;
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int ring = argc > 2 && strcmp(argv[2], "ring") == 0, one = 1;
	lo = (int)if_nametoindex("lo");
	CHECK(lo > 0, "no lo");
	mc[4] = (getpid() >> 8) & 0xff, mc[5] = getpid() & 0xff;
	tap = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
	dg = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(tap >= 0 && dg >= 0, "socket(AF_PACKET): errno %d", errno);
	int v2 = TPACKET_V2;
	CHECK(setsockopt(tap, SOL_PACKET, PACKET_VERSION, &v2, sizeof(v2)) == 0, "PACKET_VERSION");
	CHECK(setsockopt(tap, SOL_PACKET, PACKET_AUXDATA, &one, sizeof(one)) == 0, "PACKET_AUXDATA");
	CHECK(setsockopt(tap, SOL_PACKET, PACKET_ORIGDEV, &one, sizeof(one)) == 0, "PACKET_ORIGDEV");
	struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(TYPE_TAP), .sll_ifindex = lo };
	CHECK(bind(tap, (struct sockaddr *)&a, sizeof(a)) == 0, "bind tap: errno %d", errno);
	struct packet_mreq mr = { .mr_ifindex = lo, .mr_type = PACKET_MR_MULTICAST, .mr_alen = 6 };
	memcpy(mr.mr_address, mc, 6);
	CHECK(setsockopt(tap, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) == 0, "PACKET_ADD_MEMBERSHIP: errno %d", errno);
	CHECK(setsockopt(dg, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) == 0, "PACKET_IGNORE_OUTGOING");
	a.sll_protocol = htons(TYPE_DGRAM);
	CHECK(bind(dg, (struct sockaddr *)&a, sizeof(a)) == 0, "bind dgram: errno %d", errno);
	if (ring) {
		struct tpacket_req req = { 4096, 4, 2048, 8 };
		CHECK(setsockopt(tap, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) == 0, "PACKET_RX_RING: errno %d", errno);
		CHECK(mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, tap, 0) != MAP_FAILED, "mmap ring: errno %d", errno);
	}
	CHECK(membership_listed(), "multicast membership not in /proc/net/dev_mcast");
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		check_bound(tap, TYPE_TAP, "tap");
		check_bound(dg, TYPE_DGRAM, "dgram");
		CHECK(opt(tap, PACKET_VERSION) == TPACKET_V2, "tap PACKET_VERSION %d", opt(tap, PACKET_VERSION));
		CHECK(opt(tap, PACKET_AUXDATA) == 1 && opt(tap, PACKET_ORIGDEV) == 1, "tap lost PACKET_AUXDATA or PACKET_ORIGDEV");
		CHECK(opt(dg, PACKET_IGNORE_OUTGOING) == 1 && opt(dg, PACKET_AUXDATA) == 0, "dgram options");
		CHECK(membership_listed(), "multicast membership lost");
		if (!ring) {
			if (!to_tap(pass)) {
				wl_log("RETRY tap");
				CHECK(to_tap(pass), "the tap did not receive the frame");
			}
			if (!to_dgram(pass)) {
				wl_log("RETRY dgram");
				CHECK(to_dgram(pass), "the dgram socket did not receive the frame");
			}
		}
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(20);
	}
}
