/* 150 threads, more than one batch table of injected calls holds, each
 * with settings of its own: a name (PR_SET_NAME), an alternate signal stack,
 * a signal mask, a timer slack, for every tenth a nice value, for every
 * third a CPU (when the host has two or more online: the first two in
 * turn) and for every fifth an I/O priority (best effort, level i % 8). Each
 * thread checks its own settings every pass and counts; main logs
 * "OK <n>" once every thread has counted since the previous line. */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define NT 150

static volatile uint64_t counts[NT];

static void *worker(void *arg)
{
	long i = (long)arg;
	char name[16], got[17] = {0};
	snprintf(name, sizeof(name), "crowd-%ld", i);
	CHECK(prctl(PR_SET_NAME, name) == 0, "PR_SET_NAME");
	static char stacks[NT][16384];
	stack_t ss = { .ss_sp = stacks[i], .ss_size = sizeof(stacks[i]), .ss_flags = 0 };
	CHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack");
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGRTMIN + (int)(i % 20));
	CHECK(pthread_sigmask(SIG_SETMASK, &mask, NULL) == 0, "sigmask");
	unsigned long slack = 60000 + i * 1000;
	CHECK(prctl(PR_SET_TIMERSLACK, slack) == 0, "timerslack");
	pid_t tid = syscall(SYS_gettid);
	int nice = i % 10 == 0 ? 1 + (int)(i / 10) % 19 : 0;
	CHECK(setpriority(PRIO_PROCESS, tid, nice) == 0, "setpriority");
	/* pinned: the first two online CPUs in turn (this host may have one) */
	int cpus[2], ncpu = 0;
	cpu_set_t all;
	CHECK(sched_getaffinity(0, sizeof(all), &all) == 0, "sched_getaffinity");
	for (int c = 0; c < CPU_SETSIZE && ncpu < 2; c++)
		if (CPU_ISSET(c, &all))
			cpus[ncpu++] = c;
	int pin = i % 3 == 0 && ncpu == 2 ? cpus[(i / 3) % 2] : -1;
	if (pin >= 0) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(pin, &one);
		CHECK(sched_setaffinity(0, sizeof(one), &one) == 0, "sched_setaffinity");
	}
	long ioprio = i % 5 == 0 ? (2L << 13) | (i % 8) : 0; /* IOPRIO_CLASS_BE */
	if (ioprio)
		CHECK(syscall(SYS_ioprio_set, 1, tid, ioprio) == 0, "ioprio_set");
	for (;;) {
		CHECK(prctl(PR_GET_NAME, got) == 0 && strcmp(got, name) == 0, "thread %ld: name %s, want %s", i, got, name);
		stack_t now;
		CHECK(sigaltstack(NULL, &now) == 0 && now.ss_sp == stacks[i] && now.ss_size == sizeof(stacks[i]), "thread %ld: sigaltstack %p/%zu", i, now.ss_sp, now.ss_size);
		sigset_t m;
		pthread_sigmask(SIG_SETMASK, NULL, &m);
		for (int s = SIGRTMIN; s < SIGRTMIN + 20; s++)
			CHECK(sigismember(&m, s) == (s == SIGRTMIN + (int)(i % 20)), "thread %ld: mask bit %d", i, s);
		CHECK((unsigned long)prctl(PR_GET_TIMERSLACK) == slack, "thread %ld: timer slack %d", i, prctl(PR_GET_TIMERSLACK));
		errno = 0;
		int n = getpriority(PRIO_PROCESS, tid);
		CHECK(errno == 0 && n == nice, "thread %ld: nice %d, want %d", i, n, nice);
		CHECK(syscall(SYS_gettid) == tid, "thread %ld: tid changed", i);
		if (pin >= 0) {
			cpu_set_t now;
			CHECK(sched_getaffinity(0, sizeof(now), &now) == 0 && CPU_COUNT(&now) == 1 && CPU_ISSET(pin, &now), "thread %ld: affinity lost (%d CPUs)", i, CPU_COUNT(&now));
		}
		if (ioprio)
			CHECK(syscall(SYS_ioprio_get, 1, tid) == ioprio, "thread %ld: ioprio %ld, want %ld", i, syscall(SYS_ioprio_get, 1, tid), ioprio);
		counts[i]++;
		sleep_ms(10);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	for (long i = 0; i < NT; i++) {
		pthread_t t;
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setstacksize(&a, 128 * 1024);
		CHECK(pthread_create(&t, &a, worker, (void *)i) == 0, "pthread_create %ld", i);
	}
	uint64_t seen[NT] = {0};
	sleep_ms(50);
	wl_log("READY");
	for (uint64_t pass = 1;;) {
		int all = 1;
		for (int i = 0; i < NT; i++)
			if (counts[i] == seen[i])
				all = 0;
		if (all) {
			for (int i = 0; i < NT; i++)
				seen[i] = counts[i];
			wl_log("OK %lu", (unsigned long)pass++);
		}
		sleep_ms(20);
	}
}
