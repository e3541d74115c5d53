/* POSIX timers that notify one thread: a SIGEV_THREAD_ID timer aimed at a
 * worker thread (its SIGRTMIN+2 handler records which thread ran it), and a
 * glibc SIGEV_THREAD timer (glibc runs the callback from a helper thread the
 * kernel notifies the same way). Both fire every 5 ms; each pass checks
 * that both keep firing and that the signal went to the worker.
 * Logs "OK <pass>". */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>

static volatile pid_t worker_tid, hit_tid;
static volatile uint64_t hits, callbacks;

static void on_sig(int sig)
{
	(void)sig;
	hit_tid = (pid_t)syscall(SYS_gettid);
	hits++;
}

static void on_timer(union sigval v)
{
	(void)v;
	callbacks++;
}

static void *worker(void *arg)
{
	(void)arg;
	worker_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		sleep_ms(100);
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int sig = SIGRTMIN + 2;
	struct sigaction sa = { .sa_handler = on_sig, .sa_flags = SA_RESTART };
	CHECK(sigaction(sig, &sa, NULL) == 0, "sigaction");
	pthread_t th;
	CHECK(pthread_create(&th, NULL, worker, NULL) == 0, "pthread_create");
	while (!worker_tid)
		sleep_ms(1);
	/* the main thread never takes the signal: only the worker may */
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, sig);
	CHECK(pthread_sigmask(SIG_BLOCK, &m, NULL) == 0, "sigmask");
	struct sigevent se;
	memset(&se, 0, sizeof(se));
	se.sigev_notify = SIGEV_THREAD_ID;
	se.sigev_signo = sig;
	se._sigev_un._tid = worker_tid;
	timer_t tid_timer, cb_timer;
	CHECK(timer_create(CLOCK_MONOTONIC, &se, &tid_timer) == 0, "timer_create THREAD_ID: errno %d", errno);
	struct sigevent cb;
	memset(&cb, 0, sizeof(cb));
	cb.sigev_notify = SIGEV_THREAD;
	cb.sigev_notify_function = on_timer;
	CHECK(timer_create(CLOCK_MONOTONIC, &cb, &cb_timer) == 0, "timer_create THREAD: errno %d", errno);
	struct itimerspec its = { { 0, 5000000 }, { 0, 5000000 } };
	CHECK(timer_settime(tid_timer, 0, &its, NULL) == 0 && timer_settime(cb_timer, 0, &its, NULL) == 0, "timer_settime");
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		uint64_t h = hits, c = callbacks;
		for (int k = 0; k < 300 && (hits == h || callbacks == c); k++)
			sleep_ms(10);
		CHECK(hits > h, "the SIGEV_THREAD_ID timer stopped firing");
		CHECK(callbacks > c, "the SIGEV_THREAD timer stopped calling back");
		CHECK(hit_tid == worker_tid, "the timer's signal ran in thread %d, not the worker %d", hit_tid, worker_tid);
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
