/* fanotify groups, checked from inside each pass:
 *  - g1 (FAN_CLASS_NOTIF, FAN_NONBLOCK, FAN_UNLIMITED_QUEUE, events opened
 *    O_RDONLY | O_CLOEXEC): an inode mark on directory "fan" (FAN_OPEN of
 *    its children), an ignored mask on fan/a (FAN_OPEN, surviving
 *    modification) and a mount mark on /dev/shm (FAN_CLOSE_NOWRITE |
 *    FAN_ONDIR). Opening fan/b must report it (the event's descriptor names
 *    fan/b), opening fan/a must not, opening /dev/shm must report its close;
 *  - g2 (FAN_REPORT_DFID_NAME): an inode mark on "fan" (FAN_CREATE |
 *    FAN_DELETE) and a filesystem mark on its filesystem (FAN_ATTRIB):
 *    creating and removing fan/f<pass> and a chmod of fan/b must be reported
 *    with their names;
 *  - g3 (FAN_CLASS_CONTENT, blocking): FAN_OPEN_PERM on fan/p.
 * Only this process's events count (the mount and filesystem marks see the
 * whole host). fdinfo's "fanotify" lines (flags, marks, masks) must not
 * change. Events queued at a dump are lost (documented): a pass that misses
 * one is done again once ("RETRY").
 *   fanotify_kinds LOG [pending]
 * Once LOG.go exists, a process outside the tree opens fan/p: g3 must get
 * the permission event, which is denied, and the opener must see EPERM
 * ("PERM_DENIED"). With "pending" that process opens fan/p right after
 * READY and waits for a decision until LOG.go exists ("PERM_ANSWERED"):
 * phaul must refuse to dump meanwhile.
 * Logs "OK <pass>". */
#include "common.h"
#include <poll.h>
#include <signal.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char dir[4096], pa[4200], pb[4200], pp[4200];
static int g1, g2, g3;

static void fan_lines(int fd, char *out, size_t cap)
{
	char p[64], buf[16384];
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
	ssize_t n = read_file(p, buf, sizeof buf - 1);
	CHECK(n > 0, "fdinfo");
	buf[n] = 0;
	out[0] = 0;
	for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
		if (strncmp(l, "fanotify ", 9) == 0) {
			strncat(out, l, cap - strlen(out) - 2);
			strcat(out, "|");
		}
}

/* A process outside the tree (double fork) that opens fan/p and writes the
 * errno of its open (0 if allowed) to the returned pipe. */
static int opener(void)
{
	int p[2];
	CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
	pid_t c = fork();
	CHECK(c >= 0, "fork");
	if (c == 0) {
		if (fork() == 0) {
			/* Hold none of the groups: g3 must go away with the workload,
			 * answering the open. And never outlive a test that answers
			 * nothing: a fatal signal ends the wait for a decision. */
			for (int fd = 3; fd < 1024; fd++)
				if (fd != p[1])
					close(fd);
			alarm(120);
			int fd = open(pp, O_RDONLY);
			int e = fd < 0 ? errno : 0;
			ssize_t w = write(p[1], &e, sizeof e);
			(void)w;
			_exit(0);
		}
		_exit(0);
	}
	CHECK(waitpid(c, NULL, 0) == c, "waitpid");
	close(p[1]);
	return p[0];
}

/* Read the permission event for fan/p from g3 and answer it. */
static void answer(uint32_t response)
{
	struct pollfd pf = { .fd = g3, .events = POLLIN };
	CHECK(poll(&pf, 1, 5000) == 1, "no permission event");
	char buf[4096];
	ssize_t n = read(g3, buf, sizeof buf);
	CHECK(n >= (ssize_t)sizeof(struct fanotify_event_metadata), "read permission event: errno %d", errno);
	struct fanotify_event_metadata *m = (struct fanotify_event_metadata *)buf;
	CHECK(m->mask == FAN_OPEN_PERM, "permission event mask %#llx", (unsigned long long)m->mask);
	char link[64], path[4200];
	snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
	ssize_t l = readlink(link, path, sizeof path - 1);
	CHECK(l > 0, "readlink event fd");
	path[l] = 0;
	CHECK(strcmp(path, pp) == 0, "permission event for %s", path);
	struct fanotify_response r = { .fd = m->fd, .response = response };
	CHECK(write(g3, &r, sizeof r) == sizeof r, "answer: errno %d", errno);
	close(m->fd);
}

static int wait_result(int pipe_rd)
{
	int e = -1;
	struct pollfd pf = { .fd = pipe_rd, .events = POLLIN };
	CHECK(poll(&pf, 1, 5000) == 1 && read(pipe_rd, &e, sizeof e) == sizeof e, "the opener did not report");
	close(pipe_rd);
	return e;
}

static void touch_close(const char *path, int flags)
{
	int fd = open(path, flags);
	CHECK(fd >= 0, "open %s: errno %d", path, errno);
	close(fd);
}

/* The name in a FAN_EVENT_INFO_TYPE_DFID_NAME record of an event, or NULL. */
static const char *event_name(struct fanotify_event_metadata *m)
{
	char *p = (char *)m + m->metadata_len, *end = (char *)m + m->event_len;
	while (p + sizeof(struct fanotify_event_info_header) <= end) {
		struct fanotify_event_info_header *h = (struct fanotify_event_info_header *)p;
		if (h->len == 0 || p + h->len > end)
			break;
		if (h->info_type == FAN_EVENT_INFO_TYPE_DFID_NAME) {
			struct fanotify_event_info_fid *fid = (struct fanotify_event_info_fid *)p;
			struct file_handle *fh = (struct file_handle *)fid->handle;
			return (const char *)fh->f_handle + fh->handle_bytes;
		}
		p += h->len;
	}
	return NULL;
}

/* One round of actions; 1 if every expected event of this process came. */
static int round_trip(uint64_t pass)
{
	pid_t me = getpid();
	char f[4300], fname[64];
	snprintf(fname, sizeof fname, "f%llu", (unsigned long long)pass);
	snprintf(f, sizeof f, "%s/%s", dir, fname);
	touch_close(pa, O_RDONLY);
	touch_close(pb, O_RDONLY);
	touch_close("/dev/shm", O_RDONLY | O_DIRECTORY);
	touch_close(f, O_WRONLY | O_CREAT);
	CHECK(unlink(f) == 0, "unlink");
	CHECK(chmod(pb, 0644) == 0, "chmod");

	static char buf[65536];
	int open_b = 0, shm_closed = 0, created = 0, deleted = 0, attrib = 0;
	ssize_t n;
	while ((n = read(g1, buf, sizeof buf)) > 0) {
		for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
			CHECK(m->vers == FANOTIFY_METADATA_VERSION && !(m->mask & FAN_Q_OVERFLOW), "g1 event %#llx", (unsigned long long)m->mask);
			char link[64], path[4200] = "";
			snprintf(link, sizeof link, "/proc/self/fd/%d", m->fd);
			ssize_t l = readlink(link, path, sizeof path - 1);
			path[l > 0 ? l : 0] = 0;
			CHECK(fcntl(m->fd, F_GETFD) & FD_CLOEXEC, "event descriptor without O_CLOEXEC (event_f_flags lost)");
			close(m->fd);
			if (m->pid != me)
				continue;
			if (m->mask == FAN_OPEN) {
				CHECK(strcmp(path, pa) != 0, "FAN_OPEN for %s, whose mark ignores it", pa);
				if (strcmp(path, pb) == 0)
					open_b++;
				else /* the file this round creates */
					CHECK(strncmp(path, f, strlen(f)) == 0, "FAN_OPEN for %s", path);
			} else if (m->mask == FAN_CLOSE_NOWRITE) { /* FAN_ONDIR is reported in FID mode only */
				CHECK(strcmp(path, "/dev/shm") == 0, "FAN_CLOSE_NOWRITE for %s", path);
				shm_closed++;
			} else {
				FAIL("g1 event %#llx for %s", (unsigned long long)m->mask, path);
			}
		}
	}
	CHECK(errno == EAGAIN, "read g1: errno %d", errno);
	while ((n = read(g2, buf, sizeof buf)) > 0) {
		for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
			CHECK(m->fd == FAN_NOFD && !(m->mask & FAN_Q_OVERFLOW), "g2 event %#llx fd %d", (unsigned long long)m->mask, m->fd);
			if (m->pid != me)
				continue;
			const char *name = event_name(m);
			CHECK(name, "g2 event %#llx without a name", (unsigned long long)m->mask);
			/* Events on one name may be merged into one (FAN_CREATE | FAN_DELETE). */
			CHECK(!(m->mask & ~(uint64_t)(FAN_CREATE | FAN_DELETE | FAN_ATTRIB)), "g2 event %#llx for %s", (unsigned long long)m->mask, name);
			if (strcmp(name, fname) == 0) {
				created += !!(m->mask & FAN_CREATE);
				deleted += !!(m->mask & FAN_DELETE);
			} else if (strcmp(name, "b") == 0) {
				attrib += !!(m->mask & FAN_ATTRIB);
			}
		}
	}
	CHECK(errno == EAGAIN, "read g2: errno %d", errno);
	CHECK(open_b <= 1 && shm_closed <= 1 && created <= 1 && deleted <= 1 && attrib <= 1, "duplicate events");
	return open_b && shm_closed && created && deleted && attrib;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int pending = argc > 2 && strcmp(argv[2], "pending") == 0;
	snprintf(dir, sizeof dir, "%s/fan", wl_dir());
	CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir");
	snprintf(pa, sizeof pa, "%s/a", dir);
	snprintf(pb, sizeof pb, "%s/b", dir);
	snprintf(pp, sizeof pp, "%s/p", dir);
	touch_close(pa, O_WRONLY | O_CREAT);
	touch_close(pb, O_WRONLY | O_CREAT);
	touch_close(pp, O_WRONLY | O_CREAT);

	g1 = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
	CHECK(g1 >= 0, "fanotify_init g1: errno %d", errno);
	CHECK(fanotify_mark(g1, FAN_MARK_ADD, FAN_OPEN | FAN_EVENT_ON_CHILD, AT_FDCWD, dir) == 0, "mark dir: errno %d", errno);
	CHECK(fanotify_mark(g1, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, AT_FDCWD, pa) == 0, "ignore a: errno %d", errno);
	CHECK(fanotify_mark(g1, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_CLOSE_NOWRITE | FAN_ONDIR, AT_FDCWD, "/dev/shm") == 0, "mount mark: errno %d", errno);

	g2 = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE, O_RDONLY);
	CHECK(g2 >= 0, "fanotify_init g2: errno %d", errno);
	CHECK(fanotify_mark(g2, FAN_MARK_ADD, FAN_CREATE | FAN_DELETE, AT_FDCWD, dir) == 0, "mark dir (g2): errno %d", errno);
	CHECK(fanotify_mark(g2, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_ATTRIB, AT_FDCWD, dir) == 0, "filesystem mark: errno %d", errno);

	/* The permission group last: a process's descriptors are released last
	 * to first when it dies, and releasing a group that has a mark on the
	 * object of a pending permission event (g2's filesystem mark) waits
	 * until the event is answered, as releasing g3 does. */
	g3 = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, O_RDONLY);
	CHECK(g3 >= 0, "fanotify_init g3: errno %d", errno);
	CHECK(fanotify_mark(g3, FAN_MARK_ADD, FAN_OPEN_PERM, AT_FDCWD, pp) == 0, "permission mark: errno %d", errno);

	int groups[3] = { g1, g2, g3 };
	static char lines0[3][4096], now[4096];
	for (int i = 0; i < 3; i++)
		fan_lines(groups[i], lines0[i], sizeof lines0[i]);
	CHECK(round_trip(0), "events missing before any dump");
	char go[4200];
	snprintf(go, sizeof go, "%s.go", log_path);
	int waiting = pending ? opener() : -1, done = 0;
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		for (int i = 0; i < 3; i++) {
			fan_lines(groups[i], now, sizeof now);
			CHECK(strcmp(now, lines0[i]) == 0, "group %d now %s, was %s", i + 1, now, lines0[i]);
		}
		CHECK((fcntl(g1, F_GETFL) & O_NONBLOCK) && !(fcntl(g3, F_GETFL) & O_NONBLOCK), "O_NONBLOCK");
		CHECK(fcntl(g2, F_GETFD) == 0 && fcntl(g3, F_GETFD) == FD_CLOEXEC, "FD_CLOEXEC");
		if (!round_trip(pass)) {
			wl_log("RETRY");
			CHECK(round_trip(pass), "events missing");
		}
		if (!done && access(go, F_OK) == 0) {
			if (pending) {
				answer(FAN_ALLOW);
				CHECK(wait_result(waiting) == 0, "the allowed open failed");
				wl_log("PERM_ANSWERED");
			} else {
				int rd = opener();
				answer(FAN_DENY);
				int e = wait_result(rd);
				CHECK(e == EPERM, "the denied open gave errno %d", e);
				wl_log("PERM_DENIED");
			}
			done = 1;
		}
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(20);
	}
}
