/* epoll: watches on a pipe with data (level), a pipe written every 5th pass
 * (EPOLLET), a pipe whose EPOLLONESHOT fired at start (disabled), an
 * eventfd (EPOLLEXCLUSIVE) and a nested epoll. Every pass checks what
 * epoll_wait reports and that the "tfd/events/data" lines of fdinfo are
 * those recorded at start. Logs "OK <pass>". */
#include "common.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

static char watches0[4096];

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* the tfd/events/data part of each watch line, sorted (fdinfo lists them in
 * kernel pointer order). A disabled EPOLLONESHOT watch restored reads
 * events 40000018 rather than 40000000 (see docs/event-fds.md). */
static void watch_lines(int ep, char *out, size_t cap)
{
	char p[64], buf[8192], *lines[64];
	int nl = 0;
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", ep);
	ssize_t n = read_file(p, buf, sizeof buf - 1);
	CHECK(n > 0, "fdinfo");
	buf[n] = 0;
	out[0] = 0;
	for (char *l = strtok(buf, "\n"); l && nl < 64; l = strtok(NULL, "\n")) {
		if (strncmp(l, "tfd:", 4))
			continue;
		char *pos = strstr(l, "pos:");
		if (pos)
			*pos = 0;
		char *ev = strstr(l, "events: 40000018");
		if (ev)
			memcpy(ev, "events: 40000000", 16);
		lines[nl++] = l;
	}
	qsort(lines, nl, sizeof lines[0], cmp_str);
	for (int i = 0; i < nl; i++) {
		strncat(out, lines[i], cap - strlen(out) - 2);
		strcat(out, "|");
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int lvl[2], et[2], one[2];
	CHECK(pipe(lvl) == 0 && pipe(et) == 0 && pipe(one) == 0, "pipe");
	int efd = eventfd(0, 0);
	int ep = epoll_create1(0), inner = epoll_create1(EPOLL_CLOEXEC);
	CHECK(ep >= 0 && inner >= 0 && efd >= 0, "create");
	CHECK(write(lvl[1], "x", 1) == 1 && write(one[1], "y", 1) == 1, "write");
	struct epoll_event e;
	e.events = EPOLLIN;
	e.data.u64 = 0x1111222233334444ull;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, lvl[0], &e) == 0, "add lvl");
	e.events = EPOLLIN | EPOLLET;
	e.data.u64 = 2;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, et[0], &e) == 0, "add et");
	e.events = EPOLLIN | EPOLLONESHOT;
	e.data.u64 = 3;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, one[0], &e) == 0, "add oneshot");
	e.events = EPOLLIN | EPOLLEXCLUSIVE;
	e.data.u64 = 4;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e) == 0, "add exclusive errno %d", errno);
	e.events = EPOLLIN;
	e.data.u64 = 5;
	CHECK(epoll_ctl(inner, EPOLL_CTL_ADD, lvl[0], &e) == 0, "add inner lvl");
	e.data.u64 = 6;
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, inner, &e) == 0, "add nested");
	struct epoll_event evs[16];
	/* fire the oneshot */
	int n = epoll_wait(ep, evs, 16, 0);
	CHECK(n == 3, "initial epoll_wait %d", n);
	if (argc > 2 && strcmp(argv[2], "closed-watch") == 0) {
		/* a watch registered through a descriptor closed since, whose
		 * file only a child holds now: the dump must refuse it (a file
		 * the process itself still holds under another number is
		 * carried: epoll_closed.c) */
		int p2[2];
		CHECK(pipe(p2) == 0, "pipe");
		e.events = EPOLLOUT;
		e.data.u64 = 7;
		CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p2[1], &e) == 0, "add closed");
		pid_t holder = fork();
		CHECK(holder >= 0, "fork");
		if (holder == 0)
			for (;;)
				pause();
		close(p2[1]);
		wl_log("READY");
		for (uint64_t pass = 1;; pass++) {
			wl_log("OK %llu", (unsigned long long)pass);
			sleep_ms(10);
		}
	}
	watch_lines(ep, watches0, sizeof watches0);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		int wrote_et = pass % 5 == 0;
		if (wrote_et)
			CHECK(write(et[1], "e", 1) == 1, "write et");
		n = epoll_wait(ep, evs, 16, 0);
		CHECK(n >= 2, "epoll_wait %d errno %d", n, errno);
		int seen_lvl = 0, seen_nested = 0, seen_et = 0;
		for (int i = 0; i < n; i++) {
			uint64_t d = evs[i].data.u64;
			if (d == 0x1111222233334444ull)
				seen_lvl++;
			else if (d == 6)
				seen_nested++;
			else if (d == 2)
				seen_et++;
			else
				FAIL("unexpected event data %llu events %#x", (unsigned long long)d, evs[i].events);
		}
		CHECK(seen_lvl == 1 && seen_nested == 1, "level %d nested %d", seen_lvl, seen_nested);
		if (wrote_et)
			CHECK(seen_et == 1, "edge not reported after write");
		char now[4096];
		watch_lines(ep, now, sizeof now);
		CHECK(strcmp(now, watches0) == 0, "watches changed:\n%s\nwas\n%s", now, watches0);
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(10);
	}
}
