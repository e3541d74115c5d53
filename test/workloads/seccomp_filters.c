/* Seccomp state of every kind, checked from inside each pass:
 *  - the process (NO_NEW_PRIVS) has two stacked filters: A makes prctl fail
 *    with EPERM and kills the process on userfaultfd (so a checkpointer's
 *    own injected calls must not be filtered), B makes getpriority fail
 *    with EACCES (installed with SECCOMP_FILTER_FLAG_LOG);
 *  - one thread adds a third filter of its own: getppid fails with ENOTTY
 *    there only;
 *  - a child runs in strict mode, echoing bytes over two pipes (read and
 *    write are all it may call). Once LOG.go exists, it is asked to call
 *    getpid, must die of SIGKILL for it, and "STRICT_ENFORCED" is logged.
 * /proc/thread-self/status must show each thread's mode and filter count
 * (read by the thread itself: after a migration on one host the process
 * lives in a new pid namespace, and its pids do not name it in /proc).
 * Logs "OK <pass>". */
#include "common.h"
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

struct rule {
	int nr;
	uint32_t action;
};

static void install(const struct rule *r, int n, unsigned flags)
{
	struct sock_filter f[64];
	int k = 0;
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
	f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	for (int i = 0; i < n; i++) {
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)r[i].nr, 0, 1);
		f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, r[i].action);
	}
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog prog = { .len = (unsigned short)k, .filter = f };
	CHECK(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog) == 0, "seccomp filter: errno %d", errno);
}

/* "Seccomp:" and "Seccomp_filters:" of the calling thread's status */
static void seccomp_status(int *mode, int *filters)
{
	char buf[4096];
	CHECK(read_file("/proc/thread-self/status", buf, sizeof(buf)) > 0, "read /proc/thread-self/status");
	char *m = strstr(buf, "\nSeccomp:"), *f = strstr(buf, "\nSeccomp_filters:");
	CHECK(m && f, "no Seccomp lines in /proc/thread-self/status");
	*mode = atoi(m + 9);
	*filters = atoi(f + 17);
}

static int expect_errno(long r, int e)
{
	return r == -1 && errno == e;
}

static volatile uint64_t thread_passes;
static volatile pid_t thread_tid;

static void *thread_main(void *arg)
{
	(void)arg;
	struct rule c[] = { { SYS_getppid, SECCOMP_RET_ERRNO | ENOTTY } };
	install(c, 1, 0);
	thread_tid = (pid_t)syscall(SYS_gettid);
	for (;;) {
		CHECK(expect_errno(syscall(SYS_getppid), ENOTTY), "thread: getppid not filtered");
		CHECK(expect_errno(syscall(SYS_getpriority, PRIO_PROCESS, 0), EACCES), "thread: getpriority not filtered");
		CHECK(expect_errno(prctl(PR_GET_DUMPABLE), EPERM), "thread: prctl not filtered");
		int mode, n;
		seccomp_status(&mode, &n);
		CHECK(mode == 2 && n == 3, "thread: Seccomp %d, %d filters", mode, n);
		thread_passes++;
		sleep_ms(10);
	}
	return NULL;
}

/* The strict child: echo each byte plus one until EOF. */
static void strict_child(int in, int out)
{
	CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) == 0, "strict mode: errno %d", errno);
	unsigned char b;
	while (syscall(SYS_read, in, &b, 1) == 1) {
		if (b == 0xff)
			syscall(SYS_getpid); /* not allowed: SIGKILL */
		b++;
		syscall(SYS_write, out, &b, 1);
	}
	syscall(SYS_exit, 0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int to[2], from[2];
	CHECK(pipe(to) == 0 && pipe(from) == 0, "pipes");
	pid_t child = fork();
	CHECK(child >= 0, "fork");
	if (child == 0) {
		close(to[1]);
		close(from[0]);
		strict_child(to[0], from[1]);
	}
	close(to[0]);
	close(from[1]);
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
	struct rule a[] = { { SYS_prctl, SECCOMP_RET_ERRNO | EPERM }, { SYS_userfaultfd, SECCOMP_RET_KILL_PROCESS } };
	install(a, 2, 0);
	struct rule b[] = { { SYS_getpriority, SECCOMP_RET_ERRNO | EACCES } };
	install(b, 1, SECCOMP_FILTER_FLAG_LOG);
	pthread_t th;
	CHECK(pthread_create(&th, NULL, thread_main, NULL) == 0, "pthread_create");
	while (!thread_tid)
		sleep_ms(1);
	wl_log("READY");
	unsigned char ping = 0;
	char go[4200];
	snprintf(go, sizeof(go), "%s.go", log_path);
	for (uint64_t i = 1;; i++) {
		CHECK(expect_errno(prctl(PR_GET_DUMPABLE), EPERM), "prctl not filtered");
		CHECK(expect_errno(syscall(SYS_getpriority, PRIO_PROCESS, 0), EACCES), "getpriority not filtered");
		CHECK(syscall(SYS_getppid) > 0, "getppid filtered in the main thread: errno %d", errno);
		int mode, n;
		seccomp_status(&mode, &n);
		CHECK(mode == 2 && n == 2, "main thread: Seccomp %d, %d filters", mode, n);
		if (child && access(go, F_OK) == 0) {
			unsigned char bad = 0xff;
			CHECK(write(to[1], &bad, 1) == 1, "write to the strict child");
			int st = 0;
			CHECK(waitpid(child, &st, 0) == child, "waitpid: errno %d", errno);
			CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "strict child was not killed for getpid: status %#x", st);
			child = 0;
			wl_log("STRICT_ENFORCED");
		}
		if (child) {
			unsigned char back = 0;
			CHECK(write(to[1], &ping, 1) == 1 && read(from[0], &back, 1) == 1, "strict child echo: errno %d", errno);
			CHECK(back == (unsigned char)(ping + 1), "strict child answered %u to %u", back, ping);
			ping = (unsigned char)((ping + 1) % 0x80);
		}
		uint64_t tp = thread_passes;
		sleep_ms(30);
		for (int w = 0; thread_passes == tp && w < 200; w++)
			sleep_ms(10); /* a busy machine */
		CHECK(thread_passes > tp, "thread stalled for 2 s");
		wl_log("OK %lu", (unsigned long)i);
	}
}
