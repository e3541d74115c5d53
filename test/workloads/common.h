/* Shared helpers for phaul test workloads.
 *
 * Protocol: argv[1] is a log file opened with O_APPEND.  A workload writes
 * "READY" once it is set up, then "OK <counter>" lines (counter strictly
 * increasing by one) while its invariants hold, or "FAIL <reason>" and
 * exits with status 1 on the first mismatch.  Each line is written with a
 * single write(2) so lines from several threads/processes never interleave.
 */
#ifndef PHAUL_WORKLOAD_COMMON_H
#define PHAUL_WORKLOAD_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = -1;
static const char *log_path;

static void wl_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void wl_log(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (log_fd >= 0) {
		ssize_t w = write(log_fd, buf, n);
		(void)w;
	}
}

#define FAIL(...)                                                        \
	do {                                                             \
		char fail_buf_[900];                                     \
		snprintf(fail_buf_, sizeof(fail_buf_), __VA_ARGS__);     \
		wl_log("FAIL %s (%s:%d)", fail_buf_, __FILE__, __LINE__); \
		_exit(1);                                                \
	} while (0)

#define CHECK(cond, ...)                   \
	do {                               \
		if (!(cond))               \
			FAIL(__VA_ARGS__); \
	} while (0)

/* Open the log given as argv[1]; exits with status 2 on usage errors. */
static void wl_init(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s LOGFILE [args...]\n", argv[0]);
		exit(2);
	}
	log_path = argv[1];
	log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (log_fd < 0) {
		perror(argv[1]);
		exit(2);
	}
}

/* Directory holding the log file (malloc'ed), used for the workload's own files. */
static char *wl_dir(void)
{
	char *d = strdup(log_path);
	char *slash = strrchr(d, '/');
	if (!slash) {
		free(d);
		return strdup(".");
	}
	if (slash == d)
		slash[1] = 0;
	else
		*slash = 0;
	return d;
}

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t mono_ns(void) { return now_ns(CLOCK_MONOTONIC); }

/* Sleep ms milliseconds. EINTR (a handled signal) resumes the sleep; any
 * other error, e.g. a leaked -ERESTARTSYS (errno 512), is a FAIL. */
static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L }, rem;
	while (nanosleep(&ts, &rem) != 0) {
		if (errno != EINTR)
			FAIL("nanosleep: errno %d", errno);
		ts = rem;
	}
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* Read a whole (small) file, e.g. from /proc; returns length or -1. */
static ssize_t read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		len += n;
		if (len == cap)
			break;
	}
	close(fd);
	return len;
}

#endif
