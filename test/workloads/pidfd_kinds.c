/* pidfds: of a child (blocking), of this process (PIDFD_NONBLOCK) and of
 * one of its threads (PIDFD_THREAD). Each pass checks, through the
 * descriptors: each refers to the right pid (fdinfo NSpid), the child is
 * alive (signal 0 through its pidfd, no POLLIN), the flags. Once LOG.go
 * exists the child is killed through its pidfd, the pidfd turns readable
 * and waitid(P_PIDFD) reaps it: "PIDFD_REAPED" is logged.
 * Also pidfds of two children reaped before the first pass (two of the
 * first, one of the second): each pass checks they stay pidfds of dead
 * processes (fdinfo Pid -1, signals fail with ESRCH, POLLIN, nothing left
 * to reap) and that the first two still share one process (pidfs inode)
 * and the third does not.
 * Logs "OK <pass>". */
#include "common.h"
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static volatile pid_t thread_tid;

static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		sleep_ms(50);
	return NULL;
}

/* The last number of line `key` ("\nNSpid:": the innermost pid; "\nPid:",
 * -1 once the process is reaped) in the fdinfo of fd. */
static long fdinfo_last(int fd, const char *key)
{
	char path[64], buf[2048];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	CHECK(read_file(path, buf, sizeof(buf)) > 0, "read %s", path);
	char *l = strstr(buf, key);
	CHECK(l, "no %s in fdinfo of fd %d", key + 1, fd);
	long last = -1;
	for (char *p = l + strlen(key); *p && *p != '\n';) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p)
			break;
		last = v;
		p = end;
	}
	return last;
}

static long fd_pid(int fd)
{
	return fdinfo_last(fd, "\nNSpid:");
}

static long fd_pid_field(int fd)
{
	return fdinfo_last(fd, "\nPid:");
}

static int reaped_child_pidfd(int *second)
{
	pid_t d = fork();
	CHECK(d >= 0, "fork");
	if (d == 0) {
		for (;;)
			pause();
	}
	int fd = (int)syscall(SYS_pidfd_open, d, 0);
	CHECK(fd >= 0, "pidfd_open: errno %d", errno);
	if (second) {
		*second = (int)syscall(SYS_pidfd_open, d, 0);
		CHECK(*second >= 0, "pidfd_open: errno %d", errno);
	}
	kill(d, SIGKILL);
	CHECK(waitpid(d, NULL, 0) == d, "waitpid");
	return fd;
}

static int readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pid_t child = fork();
	CHECK(child >= 0, "fork");
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* no orphan when the test kills the parent */
		for (;;)
			sleep_ms(50);
	}
	pthread_t th;
	CHECK(pthread_create(&th, NULL, thread_main, NULL) == 0, "pthread_create");
	while (!thread_tid)
		sleep_ms(1);
	int cfd = (int)syscall(SYS_pidfd_open, child, 0);
	int sfd = (int)syscall(SYS_pidfd_open, getpid(), PIDFD_NONBLOCK);
	int tfd = (int)syscall(SYS_pidfd_open, thread_tid, PIDFD_THREAD);
	CHECK(cfd >= 0 && sfd >= 0 && tfd >= 0, "pidfd_open: errno %d", errno);
	int dead1b, dead1 = reaped_child_pidfd(&dead1b), dead2 = reaped_child_pidfd(NULL);
	char go[4200];
	snprintf(go, sizeof(go), "%s.go", log_path);
	int reaped = 0;
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		CHECK(fd_pid(sfd) == getpid(), "self pidfd names %ld, not %d", fd_pid(sfd), getpid());
		CHECK(fd_pid(tfd) == thread_tid, "thread pidfd names %ld, not %d", fd_pid(tfd), thread_tid);
		CHECK(fcntl(sfd, F_GETFL) & O_NONBLOCK, "self pidfd lost PIDFD_NONBLOCK");
		CHECK(fcntl(tfd, F_GETFL) & PIDFD_THREAD, "thread pidfd lost PIDFD_THREAD");
		CHECK(syscall(SYS_pidfd_send_signal, sfd, 0, NULL, 0) == 0, "signal 0 to self: errno %d", errno);
		struct stat st1, st1b, st2;
		CHECK(fstat(dead1, &st1) == 0 && fstat(dead1b, &st1b) == 0 && fstat(dead2, &st2) == 0, "fstat dead pidfds: errno %d", errno);
		CHECK(st1.st_ino == st1b.st_ino && st1.st_ino != st2.st_ino, "dead pidfds: inodes %lu %lu %lu", (unsigned long)st1.st_ino, (unsigned long)st1b.st_ino, (unsigned long)st2.st_ino);
		for (int k = 0; k < 3; k++) {
			int fd = k == 0 ? dead1 : k == 1 ? dead1b : dead2;
			CHECK(fd_pid_field(fd) == -1, "dead pidfd %d names pid %ld", fd, fd_pid_field(fd));
			errno = 0;
			CHECK(syscall(SYS_pidfd_send_signal, fd, 0, NULL, 0) < 0 && errno == ESRCH, "signal 0 through dead pidfd %d: errno %d", fd, errno);
			CHECK(readable(fd), "dead pidfd %d is not readable", fd);
			siginfo_t si;
			errno = 0;
			CHECK(waitid(P_PIDFD, fd, &si, WEXITED | WNOHANG) < 0 && errno == ECHILD, "waitid on dead pidfd %d: errno %d", fd, errno);
		}
		if (!reaped) {
			CHECK(fd_pid(cfd) == child, "child pidfd names %ld, not %d", fd_pid(cfd), child);
			CHECK(syscall(SYS_pidfd_send_signal, cfd, 0, NULL, 0) == 0, "signal 0 to the child: errno %d", errno);
			CHECK(!readable(cfd), "the child's pidfd is readable while it lives");
			if (access(go, F_OK) == 0) {
				CHECK(syscall(SYS_pidfd_send_signal, cfd, SIGKILL, NULL, 0) == 0, "SIGKILL through the pidfd: errno %d", errno);
				struct pollfd p = { .fd = cfd, .events = POLLIN };
				CHECK(poll(&p, 1, 5000) == 1, "the child's pidfd did not turn readable");
				siginfo_t si;
				memset(&si, 0, sizeof(si));
				CHECK(waitid(P_PIDFD, cfd, &si, WEXITED) == 0 && si.si_pid == child && si.si_status == SIGKILL, "waitid(P_PIDFD): errno %d pid %d", errno, si.si_pid);
				reaped = 1;
				wl_log("PIDFD_REAPED");
			}
		}
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
