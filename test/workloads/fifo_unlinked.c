/* FIFOs whose name was removed while open, checked from inside:
 *  - A: both ends open (read end O_NONBLOCK), mode 0640; every pass writes
 *    message n and reads n-1, so one message is always queued;
 *  - B: the read end only (O_NONBLOCK), 5 bytes queued, no writer left;
 *  - C: the write end only (O_NONBLOCK), 5 bytes queued, no reader left:
 *    each write fails with EPIPE.
 * Every pass checks the ends (a FIFO, no link, "PATH (deleted)", flags),
 * A's mode, B's and C's queued bytes (FIONREAD; C's through a reader
 * reopened from /proc/self/fd at the last check only), and that none of the
 * three names exists again in the directory. Once LOG.go exists: B gives
 * its bytes, then end-of-file; a reader reopened on C gets C's bytes; then
 * "FIFOS_CHECKED". Logs "OK <pass>". */
#include "common.h"
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

static char dir_path[4200];

static void check_end(int fd, const char *name, int acc)
{
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode), "%s: not a FIFO", name);
	CHECK(st.st_nlink == 0, "%s: has %lu links", name, (unsigned long)st.st_nlink);
	char link[64], got[4300], want[4300];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, got, sizeof(got) - 1);
	CHECK(n > 0, "%s: readlink errno %d", name, errno);
	got[n] = 0;
	snprintf(want, sizeof(want), " (deleted)");
	CHECK(strstr(got, want) && strncmp(got, dir_path, strlen(dir_path)) == 0, "%s: link %s", name, got);
	int fl = fcntl(fd, F_GETFL);
	CHECK((fl & (O_ACCMODE | O_NONBLOCK)) == (acc | O_NONBLOCK), "%s: flags %#x", name, fl);
}

static int queued(int fd)
{
	int q = -1;
	CHECK(ioctl(fd, FIONREAD, &q) == 0, "FIONREAD errno %d", errno);
	return q;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir_path, sizeof(dir_path), "%s/", wl_dir());
	char a[4300], b[4300], c[4300];
	snprintf(a, sizeof(a), "%sfifo-a", dir_path);
	snprintf(b, sizeof(b), "%sfifo-b", dir_path);
	snprintf(c, sizeof(c), "%sfifo-c", dir_path);

	CHECK(mkfifo(a, 0600) == 0 && chmod(a, 0640) == 0, "mkfifo a errno %d", errno);
	int ard = open(a, O_RDONLY | O_NONBLOCK), awr = open(a, O_WRONLY | O_NONBLOCK);
	CHECK(ard >= 0 && awr >= 0, "open a errno %d", errno);
	CHECK(unlink(a) == 0, "unlink a");

	CHECK(mkfifo(b, 0600) == 0, "mkfifo b errno %d", errno);
	int brw = open(b, O_RDWR), brd = open(b, O_RDONLY | O_NONBLOCK);
	CHECK(brw >= 0 && brd >= 0 && write(brw, "hello", 5) == 5, "fill b errno %d", errno);
	close(brw);
	CHECK(unlink(b) == 0, "unlink b");

	CHECK(mkfifo(c, 0600) == 0, "mkfifo c errno %d", errno);
	int crd = open(c, O_RDONLY | O_NONBLOCK), cwr = open(c, O_WRONLY | O_NONBLOCK);
	CHECK(crd >= 0 && cwr >= 0 && write(cwr, "world", 5) == 5, "fill c errno %d", errno);
	close(crd);
	CHECK(unlink(c) == 0, "unlink c");

	char go[4200];
	snprintf(go, sizeof(go), "%s.go", log_path);
	int checked = 0;
	wl_log("READY");
	for (int n = 1;; n++) {
		char buf[32], want[32];
		if (n > 1) {
			int l = snprintf(want, sizeof(want), "a%d;", n - 1);
			ssize_t r = read(ard, buf, sizeof(buf));
			CHECK(r == l && memcmp(buf, want, l) == 0, "a: read %zd (errno %d), want %s", r, errno, want);
		}
		int l = snprintf(buf, sizeof(buf), "a%d;", n);
		CHECK(write(awr, buf, l) == l, "a: write errno %d", errno);
		check_end(ard, "a read end", O_RDONLY);
		check_end(awr, "a write end", O_WRONLY);
		struct stat st;
		CHECK(fstat(ard, &st) == 0 && (st.st_mode & 07777) == 0640, "a: mode %o", st.st_mode & 07777);
		check_end(brd, "b read end", O_RDONLY);
		check_end(cwr, "c write end", O_WRONLY);
		if (!checked)
			CHECK(queued(brd) == 5, "b: %d bytes queued", queued(brd));
		CHECK(write(cwr, "x", 1) < 0 && errno == EPIPE, "c: a write without a reader did not fail with EPIPE (errno %d)", errno);
		CHECK(access(a, F_OK) != 0 && access(b, F_OK) != 0 && access(c, F_OK) != 0, "a removed FIFO has a name again");
		if (!checked && access(go, F_OK) == 0) {
			ssize_t r = read(brd, buf, sizeof(buf));
			CHECK(r == 5 && memcmp(buf, "hello", 5) == 0, "b: read %zd errno %d", r, errno);
			r = read(brd, buf, sizeof(buf));
			CHECK(r == 0, "b: no end-of-file after its bytes (%zd, errno %d)", r, errno);
			char p[64];
			snprintf(p, sizeof(p), "/proc/self/fd/%d", cwr);
			int crd2 = open(p, O_RDONLY | O_NONBLOCK);
			CHECK(crd2 >= 0, "c: reopen for reading errno %d", errno);
			r = read(crd2, buf, sizeof(buf));
			CHECK(r == 5 && memcmp(buf, "world", 5) == 0, "c: read %zd errno %d", r, errno);
			close(crd2);
			checked = 1;
			wl_log("FIFOS_CHECKED");
		}
		wl_log("OK %d", n);
		sleep_ms(50);
	}
}
