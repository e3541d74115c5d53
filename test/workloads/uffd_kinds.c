/* userfaultfds and the areas registered with them, each served by a thread
 * of its own that counts the faults per page:
 *  A (userfaultfd(2), blocking, features THREAD_ID|EVENT_REMAP|EVENT_REMOVE|
 *    EVENT_UNMAP): area M registered MISSING; its thread, blocked in read(),
 *    fills a faulting page with its pattern (UFFDIO_COPY). Pages 0-5 are
 *    filled before READY.
 *  B (/dev/userfaultfd, O_NONBLOCK, features PAGEFAULT_FLAG_WP|MINOR_SHMEM):
 *    area W registered WP (written first), pages 0-3 write-protected; its
 *    thread, in poll(), lifts the protection of a page written to. Area S,
 *    a second shared mapping of a memfd written through a first one,
 *    registered MINOR; pages 0-2 are read through S before READY (the
 *    thread answers UFFDIO_CONTINUE).
 * A thread reads the last page of M at the start and A's thread leaves that
 * fault unanswered: the thread waits in a fault whenever the process is
 * dumped, until main fills the page once LOG.go exists.
 * Each pass: contents of M 0-5, W and S 0-2, and no new fault on them;
 * W 0-3 write-protected, W 4-7 not (pagemap bit 57); VmFlags um, uw, ui on
 * M, W, S; both descriptors' features, O_NONBLOCK and FD_CLOEXEC.
 * Logs "OK <pass>".
 * Once LOG.go exists: no other area is registered (a migration's own
 * tracking registers areas in WP mode while it runs); M 6 (never touched) faults to the handler and holds
 * its pattern, M 0 does not fault; a write to W 1 traps, one to W 5 does
 * not; S 5 takes a minor fault, S 1 does not; the waiting thread gets its
 * page. Then "UFFD_CHECKED".
 * Modes (argv[2]), which phaul refuses: "fork" forks a child before READY
 * that keeps both descriptors (shared between processes); "forkevent" asks
 * A for UFFD_FEATURE_EVENT_FORK, so the child's copy of M is registered with
 * a context of the child's memory, which A's thread receives; the child
 * closes its copies of A and B; "syscall" has another thread read() from a
 * pipe into the held page: a wait in the kernel no freeze can interrupt
 * (the page arrives once LOG.go exists). */
#include "common.h"
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define PG 4096UL
#define MPAGES 16
#define WPAGES 8
#define SPAGES 8
#define HELD (MPAGES - 1)

#define FEATURES_A (UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP)
#define FEATURES_B (UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MINOR_SHMEM)

static int ua, ub;
static char *M, *W, *S, *S1;
static volatile int mfaults[MPAGES], wfaults[WPAGES], sfaults[SPAGES];
static volatile int held_seen, faulter_done, forked_ctx = -1;
static volatile char faulter_got;
static char go_path[4200];

static int go(void) { return access(go_path, F_OK) == 0; }

static char pattern(char *base, int i) { return (char)((base == M ? 'a' : base == W ? 'A' : '0') + i); }

static void fill(int i)
{
	static char page[PG];
	memset(page, pattern(M, i), PG);
	struct uffdio_copy c = { .dst = (unsigned long)M + i * PG, .src = (unsigned long)page, .len = PG };
	/* EEXIST: a fault taken again (a thread interrupted, then retrying) */
	if (ioctl(ua, UFFDIO_COPY, &c) != 0 && errno != EEXIST)
		FAIL("UFFDIO_COPY of M %d: errno %d", i, errno);
}

/* Faults of A, read blocking (a dump finds this thread in read()). */
static void *handler_a(void *arg)
{
	(void)arg;
	for (;;) {
		struct uffd_msg m;
		ssize_t r = read(ua, &m, sizeof(m));
		if (r < 0 && errno == EINTR)
			continue;
		CHECK(r == sizeof(m), "read of userfaultfd A: %zd errno %d", r, errno);
		if (m.event == UFFD_EVENT_FORK)
			forked_ctx = (int)m.arg.fork.ufd;
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		unsigned long a = m.arg.pagefault.address & ~(PG - 1);
		int i = (a - (unsigned long)M) / PG;
		CHECK(i >= 0 && i < MPAGES, "fault of A at %#lx", a);
		CHECK(m.arg.pagefault.feat.ptid > 0, "fault without the thread id (UFFD_FEATURE_THREAD_ID)");
		if (i == HELD) {
			/* main lets it through once LOG.go exists */
			held_seen = 1;
			continue;
		}
		mfaults[i]++; /* before: the fill wakes the faulting thread */
		fill(i);
	}
	return NULL;
}

/* Faults of B, polled (a nonblocking userfaultfd: poll() on a blocking one fails). */
static void *handler_b(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd p = { .fd = ub, .events = POLLIN };
		if (poll(&p, 1, -1) <= 0)
			continue;
		CHECK(!(p.revents & POLLERR), "poll of userfaultfd B: POLLERR");
		struct uffd_msg m;
		ssize_t r = read(ub, &m, sizeof(m));
		if (r < 0 && errno == EAGAIN)
			continue;
		CHECK(r == sizeof(m), "read of userfaultfd B: %zd errno %d", r, errno);
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		unsigned long a = m.arg.pagefault.address & ~(PG - 1);
		if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
			int i = (a - (unsigned long)W) / PG;
			CHECK(i >= 0 && i < WPAGES, "WP fault at %#lx", a);
			wfaults[i]++;
			struct uffdio_writeprotect w = { .range = { a, PG }, .mode = 0 };
			CHECK(ioctl(ub, UFFDIO_WRITEPROTECT, &w) == 0, "lifting the protection of W %d: errno %d", i, errno);
		} else {
			CHECK(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR, "fault of B at %#lx is neither WP nor MINOR", a);
			int i = (a - (unsigned long)S) / PG;
			CHECK(i >= 0 && i < SPAGES, "minor fault at %#lx", a);
			sfaults[i]++;
			struct uffdio_continue c = { .range = { a, PG } };
			if (ioctl(ub, UFFDIO_CONTINUE, &c) != 0 && errno != EEXIST)
				FAIL("UFFDIO_CONTINUE of S %d: errno %d", i, errno);
		}
	}
	return NULL;
}

static int pipe_fds[2];
static volatile int reader_done;

static void *reader(void *arg)
{
	(void)arg;
	ssize_t n = read(pipe_fds[0], M + HELD * PG + 8, 4);
	CHECK(n == 4, "read into the held page: %zd errno %d", n, errno);
	reader_done = 1;
	return NULL;
}

static void *faulter(void *arg)
{
	(void)arg;
	faulter_got = *(volatile char *)(M + HELD * PG);
	faulter_done = 1;
	return NULL;
}

static void reg(int fd, void *at, unsigned long len, unsigned long mode)
{
	struct uffdio_register r = { .range = { (unsigned long)at, len }, .mode = mode };
	CHECK(ioctl(fd, UFFDIO_REGISTER, &r) == 0, "UFFDIO_REGISTER mode %lu: errno %d", mode, errno);
}

/* features of fd as fdinfo shows them ("API:\taa:<features>:<ioctls>") */
static unsigned long features_of(int fd)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	CHECK(read_file(path, buf, sizeof(buf) - 1) > 0, "read %s", path);
	char *l = strstr(buf, "API:\taa:");
	CHECK(l, "no API line in fdinfo of fd %d", fd);
	return strtoul(l + 8, NULL, 16) & ~0x80000000UL;
}

/* VmFlags of the area starting at `at` */
static void vm_flags(void *at, char *out, size_t cap)
{
	static char buf[1 << 20];
	ssize_t n = read_file("/proc/self/smaps", buf, sizeof(buf) - 1);
	CHECK(n > 0, "read smaps");
	buf[n] = 0;
	char head[32];
	snprintf(head, sizeof(head), "%lx-", (unsigned long)at);
	for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (strncmp(l, head, strlen(head)) != 0)
			continue;
		char *f = strstr(l, "VmFlags:");
		CHECK(f, "no VmFlags");
		char *end = strchr(f, '\n');
		size_t len = end ? (size_t)(end - f) : strlen(f);
		snprintf(out, cap, " %.*s ", (int)len, f + 8);
		return;
	}
	FAIL("no area at %p in smaps", at);
}

/* How many areas of the process show VmFlag f */
static int areas_with_flag(const char *f)
{
	static char buf[1 << 20];
	ssize_t n = read_file("/proc/self/smaps", buf, sizeof(buf) - 1);
	CHECK(n > 0, "read smaps");
	buf[n] = 0;
	char w[8];
	snprintf(w, sizeof(w), " %s", f);
	int count = 0;
	for (char *l = strstr(buf, "VmFlags:"); l; l = strstr(l + 1, "VmFlags:")) {
		char *end = strchr(l, '\n');
		for (char *h = strstr(l, w); h && (!end || h < end); h = strstr(h + 1, w)) {
			if (h[3] == ' ' || h[3] == '\n' || h[3] == 0) {
				count++;
				break;
			}
		}
	}
	return count;
}

static int has_flag(const char *flags, const char *f)
{
	char w[8];
	snprintf(w, sizeof(w), " %s ", f);
	return strstr(flags, w) != NULL;
}

static int write_protected(char *p)
{
	/* opened each time: /proc/self/pagemap names another process once restored */
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t e;
	CHECK(pread(pm, &e, 8, ((unsigned long)p / PG) * 8) == 8, "pagemap: errno %d", errno);
	close(pm);
	return (e >> 57) & 1;
}

static void check_page(char *base, int i, const char *name)
{
	char want = pattern(base, i);
	/* volatile: the faults these take must happen here, not after the checks of the counters */
	volatile char *p = base + i * PG;
	for (unsigned long k = 0; k < PG; k += 512)
		CHECK(p[k] == want, "%s %d byte %lu is %d, not %d", name, i, k, p[k], want);
}

static void wait_for(volatile int *v, int want, const char *what)
{
	for (int t = 0; *v != want; t++) {
		CHECK(t < 500, "%s: %d, not %d", what, *v, want);
		sleep_ms(10);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	const char *mode = argc > 2 ? argv[2] : "";
	snprintf(go_path, sizeof(go_path), "%s.go", log_path);
	ua = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	CHECK(ua >= 0, "userfaultfd: errno %d", errno);
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	CHECK(dev >= 0, "/dev/userfaultfd: errno %d", errno);
	ub = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	CHECK(ub >= 0, "USERFAULTFD_IOC_NEW: errno %d", errno);
	close(dev);
	unsigned long features_a = FEATURES_A | (strcmp(mode, "forkevent") == 0 ? UFFD_FEATURE_EVENT_FORK : 0);
	struct uffdio_api api_a = { .api = UFFD_API, .features = features_a };
	struct uffdio_api api_b = { .api = UFFD_API, .features = FEATURES_B };
	CHECK(ioctl(ua, UFFDIO_API, &api_a) == 0, "UFFDIO_API A: errno %d", errno);
	CHECK(ioctl(ub, UFFDIO_API, &api_b) == 0, "UFFDIO_API B: errno %d", errno);

	M = mmap(NULL, MPAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	W = mmap(NULL, WPAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int mfd = memfd_create("uffd_minor", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, SPAGES * PG) == 0, "memfd: errno %d", errno);
	S1 = mmap(NULL, SPAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	S = mmap(NULL, SPAGES * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	CHECK(M != MAP_FAILED && W != MAP_FAILED && S1 != MAP_FAILED && S != MAP_FAILED, "mmap: errno %d", errno);
	for (int i = 0; i < WPAGES; i++)
		memset(W + i * PG, pattern(W, i), PG);
	for (int i = 0; i < SPAGES; i++)
		memset(S1 + i * PG, pattern(S, i), PG);
	reg(ua, M, MPAGES * PG, UFFDIO_REGISTER_MODE_MISSING);
	reg(ub, W, WPAGES * PG, UFFDIO_REGISTER_MODE_WP);
	reg(ub, S, SPAGES * PG, UFFDIO_REGISTER_MODE_MINOR);
	struct uffdio_writeprotect wp = { .range = { (unsigned long)W, 4 * PG }, .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	CHECK(ioctl(ub, UFFDIO_WRITEPROTECT, &wp) == 0, "UFFDIO_WRITEPROTECT: errno %d", errno);

	pthread_t th;
	CHECK(pthread_create(&th, NULL, handler_a, NULL) == 0, "pthread_create");
	CHECK(pthread_create(&th, NULL, handler_b, NULL) == 0, "pthread_create");
	for (int i = 0; i < 6; i++)
		check_page(M, i, "M");
	for (int i = 0; i < 3; i++)
		check_page(S, i, "S");
	CHECK(pthread_create(&th, NULL, faulter, NULL) == 0, "pthread_create");
	wait_for(&held_seen, 1, "the held fault");

	if (strcmp(mode, "syscall") == 0) {
		CHECK(pipe(pipe_fds) == 0 && write(pipe_fds[1], "data", 4) == 4, "pipe: errno %d", errno);
		CHECK(pthread_create(&th, NULL, reader, NULL) == 0, "pthread_create");
	}
	if (strcmp(mode, "fork") == 0 || strcmp(mode, "forkevent") == 0) {
		pid_t child = fork();
		CHECK(child >= 0, "fork: errno %d", errno);
		if (child == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (strcmp(mode, "forkevent") == 0) {
				close(ua);
				close(ub);
			}
			for (;;)
				pause();
		}
		for (int t = 0; strcmp(mode, "forkevent") == 0 && forked_ctx < 0; t++) {
			CHECK(t < 500, "no fork event");
			sleep_ms(10);
		}
	}
	wl_log("READY");
	int checked = 0;
	for (uint64_t pass = 1;; pass++) {
		for (int i = 0; i < 6; i++) {
			check_page(M, i, "M");
			CHECK(mfaults[i] == 1, "M %d faulted %d times", i, mfaults[i]);
		}
		for (int i = 0; i < WPAGES; i++) {
			check_page(W, i, "W");
			if (!checked) {
				CHECK(write_protected(W + i * PG) == (i < 4), "W %d: write-protected %d", i, write_protected(W + i * PG));
				CHECK(wfaults[i] == 0, "W %d trapped", i);
			}
		}
		for (int i = 0; i < 3; i++) {
			check_page(S, i, "S");
			CHECK(sfaults[i] == 1, "S %d took %d minor faults", i, sfaults[i]);
		}
		CHECK(!faulter_done || checked, "the held fault went through before LOG.go");
		char f[512];
		vm_flags(M, f, sizeof(f));
		CHECK(has_flag(f, "um") && !has_flag(f, "uw"), "VmFlags of M:%s", f);
		vm_flags(W, f, sizeof(f));
		CHECK(has_flag(f, "uw") && !has_flag(f, "um"), "VmFlags of W:%s", f);
		vm_flags(S, f, sizeof(f));
		CHECK(has_flag(f, "ui"), "VmFlags of S:%s", f);
		CHECK(features_of(ua) == features_a, "features of A: %#lx", features_of(ua));
		CHECK(features_of(ub) == FEATURES_B, "features of B: %#lx", features_of(ub));
		CHECK(!(fcntl(ua, F_GETFL) & O_NONBLOCK), "A became O_NONBLOCK");
		CHECK(fcntl(ub, F_GETFL) & O_NONBLOCK, "B lost O_NONBLOCK");
		CHECK((fcntl(ua, F_GETFD) & FD_CLOEXEC) && (fcntl(ub, F_GETFD) & FD_CLOEXEC), "lost FD_CLOEXEC");
		if (!checked && go()) {
			/* the process's registrations, and none of a migration's dirty tracking */
			CHECK(areas_with_flag("um") == 1 && areas_with_flag("uw") == 1 && areas_with_flag("ui") == 1,
			      "areas registered: um %d, uw %d, ui %d (want 1 each)", areas_with_flag("um"), areas_with_flag("uw"), areas_with_flag("ui"));
			check_page(M, 6, "M");
			CHECK(mfaults[6] == 1, "M 6 (never touched) faulted %d times", mfaults[6]);
			CHECK(mfaults[0] == 1, "M 0 faulted again");
			*(volatile char *)(W + 1 * PG) = pattern(W, 1);
			*(volatile char *)(W + 5 * PG) = pattern(W, 5);
			CHECK(wfaults[1] == 1, "a write to W 1 (protected) trapped %d times", wfaults[1]);
			CHECK(wfaults[5] == 0, "a write to W 5 (not protected) trapped");
			CHECK(!write_protected(W + PG), "W 1 is still write-protected");
			check_page(S, 5, "S");
			check_page(S, 1, "S");
			CHECK(sfaults[5] == 1 && sfaults[1] == 1, "minor faults: S 5 %d, S 1 %d", sfaults[5], sfaults[1]);
			fill(HELD);
			wait_for(&faulter_done, 1, "the held fault");
			CHECK(faulter_got == pattern(M, HELD), "the held fault read %d", faulter_got);
			if (strcmp(mode, "syscall") == 0) {
				wait_for(&reader_done, 1, "the read into the held page");
				CHECK(memcmp(M + HELD * PG + 8, "data", 4) == 0, "the read into the held page got other bytes");
			}
			checked = 1;
			wl_log("UFFD_CHECKED");
		}
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(20);
	}
}
