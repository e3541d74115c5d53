/* 4 worker threads, each with its own counter, __thread data, a distinct
 * signal mask and distinct values held in SSE/AVX (and AVX-512 when the CPU
 * has it) registers across a nanosleep syscall issued from inside the same
 * asm block, so a freeze usually catches the values live in registers.
 * Workers FAIL on any mismatch; main logs "OK <n> <c0> <c1> <c2> <c3>" each
 * time every worker has made progress since the previous OK line. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

#define NTHREADS 4

static volatile uint64_t counters[NTHREADS];
static pid_t tids[NTHREADS];
static int use_avx512;

static __thread uint64_t tls_val;
static __thread char tls_buf[64];

static void thread_mask(int id, sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGRTMIN + id);
	if (id & 1)
		sigaddset(set, SIGUSR1);
	if (id & 2)
		sigaddset(set, SIGUSR2);
	if (id == 3)
		sigaddset(set, SIGWINCH);
}

/* Hold in[0..1] in xmm7 (legacy SSE), in[2..5] in ymm8 across spin+nanosleep+spin. */
static long hold_avx(const uint64_t *in, uint64_t *out, const struct timespec *ts)
{
	long ret;
	__asm__ volatile(
		"movdqu (%[in]), %%xmm7\n\t"
		"vmovdqu 16(%[in]), %%ymm8\n\t"
		"mov $20000, %%ecx\n"
		"1: dec %%ecx\n\t"
		"jnz 1b\n\t"
		"mov $35, %%eax\n\t" /* nanosleep */
		"mov %[ts], %%rdi\n\t"
		"xor %%esi, %%esi\n\t"
		"syscall\n\t"
		"mov %%rax, %[ret]\n\t"
		"mov $20000, %%ecx\n"
		"2: dec %%ecx\n\t"
		"jnz 2b\n\t"
		"movdqu %%xmm7, (%[out])\n\t"
		"vmovdqu %%ymm8, 16(%[out])\n\t"
		"vzeroupper\n\t"
		: [ret] "=&r"(ret)
		: [in] "r"(in), [out] "r"(out), [ts] "r"(ts)
		: "rax", "rcx", "rdx", "rsi", "rdi", "r11", "memory", "xmm7", "xmm8");
	return ret;
}

/* As hold_avx, plus in[6..13] in zmm16 (only reachable with AVX-512). */
__attribute__((target("avx512f")))
static long hold_avx512(const uint64_t *in, uint64_t *out, const struct timespec *ts)
{
	long ret;
	__asm__ volatile(
		"movdqu (%[in]), %%xmm7\n\t"
		"vmovdqu 16(%[in]), %%ymm8\n\t"
		"vmovdqu64 48(%[in]), %%zmm16\n\t"
		"mov $20000, %%ecx\n"
		"1: dec %%ecx\n\t"
		"jnz 1b\n\t"
		"mov $35, %%eax\n\t"
		"mov %[ts], %%rdi\n\t"
		"xor %%esi, %%esi\n\t"
		"syscall\n\t"
		"mov %%rax, %[ret]\n\t"
		"mov $20000, %%ecx\n"
		"2: dec %%ecx\n\t"
		"jnz 2b\n\t"
		"movdqu %%xmm7, (%[out])\n\t"
		"vmovdqu %%ymm8, 16(%[out])\n\t"
		"vmovdqu64 %%zmm16, 48(%[out])\n\t"
		"vzeroupper\n\t"
		: [ret] "=&r"(ret)
		: [in] "r"(in), [out] "r"(out), [ts] "r"(ts)
		: "rax", "rcx", "rdx", "rsi", "rdi", "r11", "memory", "xmm7", "xmm8", "xmm16");
	return ret;
}

static void *worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	sigset_t want, cur;
	thread_mask(id, &want);
	CHECK(pthread_sigmask(SIG_SETMASK, &want, NULL) == 0, "pthread_sigmask");
	tids[id] = syscall(SYS_gettid);
	tls_val = mix64(0x1000 + id);
	for (int i = 0; i < 64; i++)
		tls_buf[i] = (char)(id * 31 + i);
	uint64_t iter = 0;
	for (;;) {
		CHECK(tls_val == mix64(0x1000 + id), "thread %d tls_val", id);
		for (int i = 0; i < 64; i++)
			CHECK(tls_buf[i] == (char)(id * 31 + i), "thread %d tls_buf[%d]", id, i);
		CHECK((pid_t)syscall(SYS_gettid) == tids[id], "thread %d tid changed", id);
		CHECK(pthread_sigmask(SIG_BLOCK, NULL, &cur) == 0, "pthread_sigmask read");
		for (int s = 1; s <= 64; s++) {
			if (s == 32 || s == 33)
				continue;
			CHECK(sigismember(&cur, s) == sigismember(&want, s),
			      "thread %d sigmask: signal %d blocked=%d want %d", id, s,
			      sigismember(&cur, s), sigismember(&want, s));
		}
		uint64_t in[14] __attribute__((aligned(64))), out[14] __attribute__((aligned(64)));
		for (int i = 0; i < 14; i++) {
			in[i] = mix64(((uint64_t)id << 32) ^ (iter << 4) ^ i);
			out[i] = 0;
		}
		struct timespec ts = { 0, 5 * 1000000L };
		long ret = use_avx512 ? hold_avx512(in, out, &ts) : hold_avx(in, out, &ts);
		CHECK(ret == 0 || ret == -EINTR, "thread %d nanosleep returned %ld", id, ret);
		int n = use_avx512 ? 14 : 6;
		for (int i = 0; i < n; i++)
			CHECK(in[i] == out[i], "thread %d vector word %d: %016lx != %016lx (%s)", id, i,
			      (unsigned long)out[i], (unsigned long)in[i],
			      i < 2 ? "xmm7" : i < 6 ? "ymm8" : "zmm16");
		iter++;
		counters[id]++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	__builtin_cpu_init();
	use_avx512 = !!__builtin_cpu_supports("avx512f");
	if (!__builtin_cpu_supports("avx2") && !__builtin_cpu_supports("avx")) {
		fprintf(stderr, "threads: needs AVX\n");
		return 2;
	}
	pthread_t th[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		CHECK(pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) == 0, "pthread_create");
	uint64_t last[NTHREADS] = { 0 }, n = 0, stalled = 0;
	wl_log("READY avx512=%d", use_avx512);
	for (;;) {
		sleep_ms(10);
		int all = 1;
		for (int i = 0; i < NTHREADS; i++)
			if (counters[i] <= last[i])
				all = 0;
		if (!all) {
			/* counted in loop iterations, not wall time, so a dump/restore pause is not a stall */
			CHECK(++stalled < 1000, "a worker thread made no progress for 1000 rounds");
			continue;
		}
		stalled = 0;
		for (int i = 0; i < NTHREADS; i++)
			last[i] = counters[i];
		n++;
		wl_log("OK %lu %lu %lu %lu %lu", (unsigned long)n, (unsigned long)last[0], (unsigned long)last[1],
		       (unsigned long)last[2], (unsigned long)last[3]);
	}
}
