/* Threads that spend nearly all their time blocked in system calls, so a
 * freeze catches them inside one and the restore has to restart it:
 *   sleeper  nanosleep(500 ms): must return 0 (EINTR is a FAIL) after >= 500 ms
 *   reader   read() on a pipe; the writer thread writes a sequence number every 50 ms
 *   condwait pthread_cond_wait; main signals a new generation every 10 ms
 *   futex    raw FUTEX_WAIT on a word main changes every 10 ms: 0 or EAGAIN only
 *   poller   poll() on an idle pipe with a 250 ms timeout: must return 0 after >= 250 ms
 * Any unexpected error (EINTR, errno 512/516 = a leaked -ERESTART*) is a FAIL.
 * Main logs "OK <n> <counters...>" each time every thread progressed. */
#include "common.h"
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sys/syscall.h>

enum { T_SLEEP, T_READ, T_WRITE, T_COND, T_FUTEX, T_POLL, NT };
static const char *names[NT] = { "sleeper", "reader", "writer", "condwait", "futex", "poller" };
static volatile uint64_t counters[NT];

static int data_pipe[2], idle_pipe[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint64_t cond_gen;
static uint32_t futex_word;

static void *sleeper(void *a)
{
	(void)a;
	for (;;) {
		uint64_t t0 = mono_ns();
		struct timespec ts = { 0, 500 * 1000000L };
		int r = nanosleep(&ts, NULL);
		CHECK(r == 0, "nanosleep returned %d errno %d", r, errno);
		uint64_t el = mono_ns() - t0;
		CHECK(el >= 500 * 1000000ull, "nanosleep returned after only %lu us", (unsigned long)(el / 1000));
		counters[T_SLEEP]++;
	}
}

static void *reader(void *a)
{
	(void)a;
	for (uint64_t expect = 1;; expect++) {
		uint64_t v;
		ssize_t r = read(data_pipe[0], &v, sizeof v);
		CHECK(r == sizeof v, "pipe read returned %zd errno %d", r, errno);
		CHECK(v == expect, "pipe read %lu, expected %lu", (unsigned long)v, (unsigned long)expect);
		counters[T_READ]++;
	}
}

static void *writer(void *a)
{
	(void)a;
	for (uint64_t v = 1;; v++) {
		sleep_ms(50);
		ssize_t r = write(data_pipe[1], &v, sizeof v);
		CHECK(r == sizeof v, "pipe write returned %zd errno %d", r, errno);
		counters[T_WRITE]++;
	}
}

static void *condwait(void *a)
{
	(void)a;
	pthread_mutex_lock(&mu);
	uint64_t seen = cond_gen;
	for (;;) {
		while (cond_gen == seen) {
			int r = pthread_cond_wait(&cv, &mu);
			CHECK(r == 0, "pthread_cond_wait returned %d", r);
		}
		CHECK(cond_gen > seen, "cond generation went backwards");
		seen = cond_gen;
		counters[T_COND]++;
	}
}

static void *futexer(void *a)
{
	(void)a;
	for (;;) {
		uint32_t v = __atomic_load_n(&futex_word, __ATOMIC_SEQ_CST);
		long r = syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
		CHECK(r == 0 || errno == EAGAIN, "futex wait returned %ld errno %d", r, errno);
		if (__atomic_load_n(&futex_word, __ATOMIC_SEQ_CST) != v)
			counters[T_FUTEX]++;
	}
}

static void *poller(void *a)
{
	(void)a;
	for (;;) {
		struct pollfd p = { .fd = idle_pipe[0], .events = POLLIN };
		uint64_t t0 = mono_ns();
		int r = poll(&p, 1, 250);
		CHECK(r == 0, "poll returned %d errno %d revents %x", r, errno, p.revents);
		uint64_t el = mono_ns() - t0;
		CHECK(el >= 250 * 1000000ull - 1000000ull, "poll timed out after only %lu us", (unsigned long)(el / 1000));
		counters[T_POLL]++;
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	CHECK(pipe2(data_pipe, O_CLOEXEC) == 0, "pipe");
	CHECK(pipe2(idle_pipe, O_CLOEXEC) == 0, "pipe");
	void *(*fns[NT])(void *) = { sleeper, reader, writer, condwait, futexer, poller };
	pthread_t th[NT];
	for (int i = 0; i < NT; i++)
		CHECK(pthread_create(&th[i], NULL, fns[i], NULL) == 0, "pthread_create");
	uint64_t last[NT] = { 0 }, n = 0, stalled = 0;
	wl_log("READY");
	for (;;) {
		sleep_ms(10);
		pthread_mutex_lock(&mu);
		cond_gen++;
		pthread_cond_signal(&cv);
		pthread_mutex_unlock(&mu);
		__atomic_add_fetch(&futex_word, 1, __ATOMIC_SEQ_CST);
		syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);

		int all = 1;
		for (int i = 0; i < NT; i++)
			if (counters[i] <= last[i])
				all = 0;
		if (!all) {
			if (++stalled >= 1000) {
				for (int i = 0; i < NT; i++)
					if (counters[i] <= last[i])
						FAIL("thread %s made no progress for 1000 rounds", names[i]);
			}
			continue;
		}
		stalled = 0;
		for (int i = 0; i < NT; i++)
			last[i] = counters[i];
		n++;
		wl_log("OK %lu sleep=%lu read=%lu cond=%lu futex=%lu poll=%lu", (unsigned long)n,
		       (unsigned long)last[T_SLEEP], (unsigned long)last[T_READ], (unsigned long)last[T_COND],
		       (unsigned long)last[T_FUTEX], (unsigned long)last[T_POLL]);
	}
}
