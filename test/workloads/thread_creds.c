/* Threads of one process with credentials of their own, set with raw
 * system calls (glibc's setresuid would change every thread): one thread
 * runs as uid 1000, another as gid 2000 with groups {300, 301}, the main
 * thread stays as it started. Each checks its own ids (raw getresuid,
 * getresgid, getgroups) every pass; main logs "OK <n>" once both threads
 * have checked since the previous line. */
#include "common.h"
#include <grp.h>
#include <pthread.h>
#include <sys/syscall.h>

static volatile uint64_t passes[2];

static void ids(uid_t *u, gid_t *g)
{
	uid_t r, e, s;
	gid_t gr, ge, gs;
	CHECK(syscall(SYS_getresuid, &r, &e, &s) == 0 && syscall(SYS_getresgid, &gr, &ge, &gs) == 0, "getres*id");
	CHECK(r == e && e == s && gr == ge && ge == gs, "mixed ids %u/%u/%u %u/%u/%u", r, e, s, gr, ge, gs);
	*u = r;
	*g = gr;
}

static void *as_user(void *arg)
{
	(void)arg;
	CHECK(syscall(SYS_setresuid, 1000, 1000, 1000) == 0, "setresuid: errno %d", errno);
	for (;;) {
		uid_t u;
		gid_t g;
		ids(&u, &g);
		CHECK(u == 1000 && g == 0, "uid thread: uid %u gid %u", u, g);
		passes[0]++;
		sleep_ms(10);
	}
	return NULL;
}

static void *as_group(void *arg)
{
	(void)arg;
	gid_t want[2] = {300, 301};
	CHECK(syscall(SYS_setgroups, 2, want) == 0, "setgroups: errno %d", errno);
	CHECK(syscall(SYS_setresgid, 2000, 2000, 2000) == 0, "setresgid: errno %d", errno);
	for (;;) {
		uid_t u;
		gid_t g, got[8];
		ids(&u, &g);
		int n = syscall(SYS_getgroups, 8, got);
		CHECK(u == 0 && g == 2000, "gid thread: uid %u gid %u", u, g);
		CHECK(n == 2 && got[0] == 300 && got[1] == 301, "gid thread: %d groups", n);
		passes[1]++;
		sleep_ms(10);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(getuid() == 0, "must start as root");
	pthread_t a, b;
	pthread_create(&a, NULL, as_user, NULL);
	pthread_create(&b, NULL, as_group, NULL);
	sleep_ms(50);
	wl_log("READY");
	uint64_t seen[2] = {0, 0};
	for (uint64_t i = 1;;) {
		uid_t u;
		gid_t g;
		ids(&u, &g);
		CHECK(u == 0 && g == 0, "main thread: uid %u gid %u", u, g);
		if (passes[0] != seen[0] && passes[1] != seen[1]) {
			seen[0] = passes[0];
			seen[1] = passes[1];
			wl_log("OK %lu", (unsigned long)i++);
		}
		sleep_ms(20);
	}
}
