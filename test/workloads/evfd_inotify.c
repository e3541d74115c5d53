/* inotify: watches on a directory (create/delete), and on two files of it,
 * the first removed again so the watch descriptors have a gap (1, 3).
 * Every pass creates and removes a file and reads both events; checks the
 * wd list and masks in fdinfo. Logs "OK <pass>". */
#include "common.h"
#include <sys/inotify.h>
#include <sys/stat.h>

static char dir[4096];

static void wd_lines(int fd, char *out, size_t cap)
{
	char p[64], buf[8192];
	snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
	ssize_t n = read_file(p, buf, sizeof buf - 1);
	CHECK(n > 0, "fdinfo");
	buf[n] = 0;
	out[0] = 0;
	for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n")) {
		char *w = strstr(l, "wd:"), *m = strstr(l, "mask:"), *ig = strstr(l, " ignored_mask");
		if (!w || !m || !ig)
			continue;
		char tmp[128];
		snprintf(tmp, sizeof tmp, "%.*s %.*s|", (int)strcspn(w, " "), w, (int)(ig - m), m);
		strncat(out, tmp, cap - strlen(out) - 1);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	snprintf(dir, sizeof dir, "%s/watched", wl_dir());
	CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir");
	char a[4200], b[4200];
	snprintf(a, sizeof a, "%s/a", dir);
	snprintf(b, sizeof b, "%s/b", dir);
	close(open(a, O_CREAT | O_WRONLY, 0644));
	close(open(b, O_CREAT | O_WRONLY, 0644));
	int in = inotify_init1(IN_NONBLOCK);
	CHECK(in >= 0, "inotify_init1");
	int wd1 = inotify_add_watch(in, dir, IN_CREATE | IN_DELETE);
	int wd2 = inotify_add_watch(in, a, IN_MODIFY);
	int wd3 = inotify_add_watch(in, b, IN_ATTRIB | IN_ONESHOT);
	CHECK(wd1 == 1 && wd2 == 2 && wd3 == 3, "wds %d %d %d", wd1, wd2, wd3);
	CHECK(inotify_rm_watch(in, wd2) == 0, "rm");
	char ev[8192];
	while (read(in, ev, sizeof ev) > 0)
		;
	char lines0[2048];
	wd_lines(in, lines0, sizeof lines0);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		char f[4300];
		snprintf(f, sizeof f, "%s/f%llu", dir, (unsigned long long)pass);
		int fd = open(f, O_CREAT | O_WRONLY, 0644);
		CHECK(fd >= 0, "create %s", f);
		close(fd);
		CHECK(unlink(f) == 0, "unlink");
		ssize_t n = read(in, ev, sizeof ev);
		/* Events queued at a freeze are lost (docs/limitations.md): a move
		 * between this pass's create and its read takes one or both events
		 * with it. Once is the move; twice is a fault. */
		static int lost;
		if (n < 0 && errno == EAGAIN && !lost++) {
			wl_log("LOST both events of pass %llu (queued at a freeze)", (unsigned long long)pass);
			continue;
		}
		CHECK(n > 0, "no inotify event (errno %d)", errno);
		int creates = 0, deletes = 0;
		for (char *p = ev; p < ev + n;) {
			struct inotify_event *ie = (struct inotify_event *)p;
			CHECK(ie->wd == wd1, "event for wd %d mask %#x", ie->wd, ie->mask);
			CHECK(ie->len > 0 && strcmp(ie->name, f + strlen(dir) + 1) == 0, "event name %s", ie->len ? ie->name : "");
			if (ie->mask & IN_CREATE)
				creates++;
			if (ie->mask & IN_DELETE)
				deletes++;
			p += sizeof *ie + ie->len;
		}
		if (creates == 0 && deletes == 1 && !lost++) {
			wl_log("LOST the create event of pass %llu (queued at a freeze)", (unsigned long long)pass);
			creates = 1;
		}
		CHECK(creates == 1 && deletes == 1, "creates %d deletes %d", creates, deletes);
		char now[2048];
		wd_lines(in, now, sizeof now);
		CHECK(strcmp(now, lines0) == 0, "watches now %s, were %s", now, lines0);
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(10);
	}
}
