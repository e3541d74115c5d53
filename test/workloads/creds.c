/* Credentials, capabilities, nice, scheduling and personality: started as
 * root, it becomes uid 1000/1001/1002 with groups {100, 200}, keeps only
 * CAP_NET_BIND_SERVICE, sets nice 5 in main and 7 in its thread, and a
 * personality flag; each pass every thread checks its own view. */
#include "common.h"
#include <grp.h>
#include <pthread.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <linux/capability.h>

#define CAPS (1u << CAP_NET_BIND_SERVICE)

static void check_creds(const char *who, int nice_want)
{
	uid_t r, e, s;
	gid_t gr, ge, gs;
	CHECK(getresuid(&r, &e, &s) == 0 && r == 1000 && e == 1001 && s == 1002, "%s: uids %u %u %u", who, r, e, s);
	CHECK(getresgid(&gr, &ge, &gs) == 0 && gr == 2000 && ge == 2001 && gs == 2002, "%s: gids %u %u %u", who, gr, ge, gs);
	gid_t g[8];
	int n = getgroups(8, g);
	CHECK(n == 2 && g[0] == 100 && g[1] == 200, "%s: groups (%d)", who, n);
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	CHECK(syscall(SYS_capget, &h, d) == 0, "%s: capget", who);
	CHECK(d[0].effective == CAPS && d[0].permitted == CAPS && d[0].inheritable == 0 && d[1].permitted == 0,
	      "%s: caps eff %x prm %x inh %x", who, d[0].effective, d[0].permitted, d[0].inheritable);
	CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN) == 0 && prctl(PR_CAPBSET_READ, CAP_NET_BIND_SERVICE) == 1, "%s: bounding set", who);
	errno = 0;
	int nice_now = getpriority(PRIO_PROCESS, syscall(SYS_gettid));
	CHECK(errno == 0 && nice_now == nice_want, "%s: nice %d, want %d", who, nice_now, nice_want);
	CHECK(personality(0xffffffff) == ADDR_NO_RANDOMIZE, "%s: personality %x", who, personality(0xffffffff));
	CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "%s: no_new_privs", who);
}

static volatile int thread_ok;

static void *worker(void *arg)
{
	(void)arg;
	CHECK(setpriority(PRIO_PROCESS, syscall(SYS_gettid), 7) == 0, "thread nice");
	for (;;) {
		check_creds("thread", 7);
		thread_ok++;
		sleep_ms(10);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(personality(ADDR_NO_RANDOMIZE) != -1, "personality");
	gid_t groups[2] = {100, 200};
	CHECK(setgroups(2, groups) == 0, "setgroups");
	CHECK(setresgid(2000, 2001, 2002) == 0, "setresgid");
	CHECK(prctl(PR_SET_KEEPCAPS, 1) == 0, "keepcaps");
	for (int c = 0; c <= CAP_LAST_CAP; c++)
		if (c != CAP_NET_BIND_SERVICE)
			prctl(PR_CAPBSET_DROP, c);
	CHECK(setresuid(1000, 1001, 1002) == 0, "setresuid");
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2] = {{CAPS, CAPS, 0}, {0, 0, 0}};
	CHECK(syscall(SYS_capset, &h, d) == 0, "capset");
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
	CHECK(setpriority(PRIO_PROCESS, syscall(SYS_gettid), 5) == 0, "nice");
	pthread_t t;
	pthread_create(&t, NULL, worker, NULL);
	wl_log("READY");
	/* The thread must keep checking; a busy machine may delay it a while. */
	uint64_t progress = mono_ns();
	for (uint64_t i = 1;; i++) {
		check_creds("main", 5);
		int before = thread_ok;
		sleep_ms(20);
		if (thread_ok != before)
			progress = mono_ns();
		CHECK(mono_ns() - progress < 2000000000ull, "thread stalled");
		wl_log("OK %lu", (unsigned long)i);
	}
}
