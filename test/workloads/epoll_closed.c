/* epoll watches registered under descriptor numbers that were closed (or
 * that name another file now), their files kept open under other numbers:
 * three pipes registered as fd 702 (two of those numbers closed after), two
 * as 701 (one closed), and one as 703, which then names a pipe that is not
 * watched. Each pass writes a byte into each watched pipe in turn and
 * checks that epoll reports exactly that pipe (its data), reads it back,
 * and checks that a byte in the unwatched pipe at 703 wakes nothing; logs
 * "OK <n>". */
#include "common.h"
#include <sys/epoll.h>

#define N 6

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	CHECK(ep >= 0, "epoll_create1 errno %d", errno);
	static const struct { int at; int close; } plan[N] = { { 702, 1 }, { 702, 1 }, { 702, 0 }, { 701, 1 }, { 701, 0 }, { 703, 1 } };
	int rd[N], wr[N];
	for (int i = 0; i < N; i++) {
		int p[2];
		CHECK(pipe2(p, O_NONBLOCK) == 0, "pipe errno %d", errno);
		rd[i] = p[0];
		wr[i] = p[1];
		CHECK(dup2(rd[i], plan[i].at) == plan[i].at, "dup2 errno %d", errno);
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 1000 + i };
		CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, plan[i].at, &ev) == 0, "epoll_ctl ADD %d errno %d", plan[i].at, errno);
		if (plan[i].close)
			close(plan[i].at);
	}
	int other[2];
	CHECK(pipe2(other, O_NONBLOCK) == 0, "pipe errno %d", errno);
	CHECK(dup2(other[0], 703) == 703, "dup2 703 errno %d", errno);
	wl_log("READY");
	for (uint64_t n = 1;; n++) {
		for (int i = 0; i < N; i++) {
			char b = (char)i;
			CHECK(write(wr[i], &b, 1) == 1, "write errno %d", errno);
			struct epoll_event got[N];
			int k;
			/* (a freeze interrupts epoll_wait: EINTR, as any stop does) */
			while ((k = epoll_wait(ep, got, N, 1000)) < 0 && errno == EINTR)
				;
			CHECK(k == 1 && got[0].data.u64 == (uint64_t)(1000 + i), "pipe %d: epoll reported %d events, the first %lu", i, k, k > 0 ? (unsigned long)got[0].data.u64 : 0ul);
			CHECK(read(rd[i], &b, 1) == 1 && b == (char)i, "read back");
		}
		char z = 'z';
		CHECK(write(other[1], &z, 1) == 1, "write other");
		struct epoll_event got;
		int woke;
		while ((woke = epoll_wait(ep, &got, 1, 20)) < 0 && errno == EINTR)
			;
		CHECK(woke == 0, "the unwatched pipe now at fd 703 woke the epoll (%d events, data %lu)", woke, woke > 0 ? (unsigned long)got.data.u64 : 0ul);
		CHECK(read(703, &z, 1) == 1, "read 703");
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(50);
	}
}
