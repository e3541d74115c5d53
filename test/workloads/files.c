/* Open files that must come back with the same fd numbers, offsets, flags
 * and data.  Every pass (10 ms) checks:
 *   reg     O_RDWR regular file: reads one byte at its offset (starts at 37)
 *   app     O_WRONLY|O_APPEND file: appends a 16-byte record, size must match
 *   dupA/B/C one open file description (dup, F_DUPFD 100): shared offset
 *   cx      an O_CLOEXEC fd (FD_CLOEXEC set) while dupA has it clear
 *   null    /dev/null O_RDWR
 *   dfd   an opened directory (same inode, openat through it works)
 *   pdir, pfile O_PATH descriptors of the directory and of reg (no offset,
 *           no reading; fstatat through pdir works)
 *   pipe    a pipe holding 1000 unread bytes (read end O_NONBLOCK); each
 *           pass reads 10 and writes 10 more of a running byte sequence
 *   fifo    a FIFO (mkfifo) with the same rolling unread data
 *   gone    a node of /dev/null (mknod, mode 0640) removed while open: the
 *           same device, mode and no link, still writable
 * plus readlink(/proc/self/fd/N) for the named ones and that no other fds
 * exist besides the log and those inherited at start.  Logs "OK <pass>". */
#include "common.h"
#include <dirent.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

static char dir[4096];
static int inherited[64], ninherited;

/* fds open before we started (stdio, whatever the launcher leaked) are not ours to check */
static void note_inherited(void)
{
	DIR *dd = opendir("/proc/self/fd");
	CHECK(dd != NULL, "opendir /proc/self/fd");
	struct dirent *de;
	while ((de = readdir(dd)))
		if (de->d_name[0] != '.' && atoi(de->d_name) != dirfd(dd) && atoi(de->d_name) != log_fd && ninherited < 64)
			inherited[ninherited++] = atoi(de->d_name);
	closedir(dd);
}
static inline uint8_t pat(uint64_t i) { return (uint8_t)(mix64(i) >> 17); }
static inline uint8_t seqb(uint64_t tag, uint64_t i) { return (uint8_t)(mix64(i * 4 + tag) >> 9); }

static int mkfile(const char *name, int flags, size_t len, char *path)
{
	snprintf(path, 4200, "%s/%s", dir, name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0, "create %s errno %d", path, errno);
	for (size_t i = 0; i < len; i++) {
		uint8_t b = pat(i);
		CHECK(write(fd, &b, 1) == 1, "write %s", path);
	}
	close(fd);
	fd = open(path, flags);
	CHECK(fd >= 0, "open %s errno %d", path, errno);
	return fd;
}

static void check_link(int fd, const char *want)
{
	char p[64], got[4200];
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, got, sizeof got - 1);
	CHECK(n > 0, "readlink %s errno %d", p, errno);
	got[n] = 0;
	CHECK(strcmp(got, want) == 0, "fd %d is %s, expected %s", fd, got, want);
}

static void check_fl(const char *what, int fd, int mask, int want)
{
	int fl = fcntl(fd, F_GETFL);
	CHECK(fl >= 0, "%s: F_GETFL errno %d", what, errno);
	CHECK((fl & mask) == want, "%s: F_GETFL %#o & %#o != %#o", what, fl, mask, want);
}

static void check_fd(const char *what, int fd, int want)
{
	int f = fcntl(fd, F_GETFD);
	CHECK(f == want, "%s: F_GETFD %d, expected %d", what, f, want);
}

/* rolling buffer through a pipe or FIFO: bytes [rd_seq, wr_seq) are in flight */
struct roll {
	const char *name;
	int rd, wr, tag;
	uint64_t rd_seq, wr_seq;
};

static void roll_write(struct roll *r, size_t n)
{
	uint8_t buf[1000];
	for (size_t i = 0; i < n; i++)
		buf[i] = seqb(r->tag, r->wr_seq + i);
	CHECK(write(r->wr, buf, n) == (ssize_t)n, "%s write errno %d", r->name, errno);
	r->wr_seq += n;
}

static void roll_step(struct roll *r)
{
	int avail = -1;
	CHECK(ioctl(r->rd, FIONREAD, &avail) == 0, "%s FIONREAD", r->name);
	CHECK(avail == (int)(r->wr_seq - r->rd_seq), "%s holds %d unread bytes, expected %d", r->name, avail,
	      (int)(r->wr_seq - r->rd_seq));
	uint8_t buf[10];
	ssize_t n = read(r->rd, buf, 10);
	CHECK(n == 10, "%s read returned %zd errno %d", r->name, n, errno);
	for (int i = 0; i < 10; i++)
		CHECK(buf[i] == seqb(r->tag, r->rd_seq + i), "%s byte %lu wrong", r->name, (unsigned long)(r->rd_seq + i));
	r->rd_seq += 10;
	roll_write(r, 10);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	note_inherited();
	char *d = wl_dir();
	CHECK(realpath(d, dir) != NULL, "realpath %s", d);
	static char reg_path[4200], app_path[4200], dup_path[4200], cx_path[4200], fifo_path[4200];

	int reg = mkfile("files-reg.dat", O_RDWR, 4096, reg_path);
	CHECK(lseek(reg, 37, SEEK_SET) == 37, "lseek");
	int app = mkfile("files-append.log", O_WRONLY | O_APPEND, 0, app_path);
	int dupA = mkfile("files-dup.dat", O_RDONLY, 4096, dup_path);
	int dupB = dup(dupA);
	int dupC = fcntl(dupA, F_DUPFD, 100);
	CHECK(dupB >= 0 && dupC >= 100, "dup");
	int cx = mkfile("files-cloexec.dat", O_RDONLY | O_CLOEXEC, 16, cx_path);
	int null = open("/dev/null", O_RDWR);
	CHECK(null >= 0, "open /dev/null");
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	CHECK(dfd >= 0, "open dir");
	struct stat dst;
	CHECK(stat(dir, &dst) == 0, "stat dir");
	int pdir = open(dir, O_PATH | O_DIRECTORY), pfile = open(reg_path, O_PATH);
	CHECK(pdir >= 0 && pfile >= 0, "O_PATH opens errno %d", errno);

	int p[2];
	CHECK(pipe(p) == 0, "pipe");
	CHECK(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	struct roll pr = { "pipe", p[0], p[1], 1, 0, 0 };
	roll_write(&pr, 1000);

	snprintf(fifo_path, sizeof fifo_path, "%s/files-fifo", dir);
	unlink(fifo_path);
	CHECK(mkfifo(fifo_path, 0600) == 0, "mkfifo errno %d", errno);
	int frd = open(fifo_path, O_RDONLY | O_NONBLOCK);
	int fwr = open(fifo_path, O_WRONLY);
	CHECK(frd >= 0 && fwr >= 0, "open fifo errno %d", errno);
	struct roll fr = { "fifo", frd, fwr, 2, 0, 0 };
	roll_write(&fr, 1000);

	char gone_path[4200];
	snprintf(gone_path, sizeof gone_path, "%s/files-devnull", dir);
	unlink(gone_path);
	CHECK(mknod(gone_path, S_IFCHR | 0640, makedev(1, 3)) == 0, "mknod errno %d", errno);
	CHECK(chmod(gone_path, 0640) == 0, "chmod errno %d", errno);
	int gone = open(gone_path, O_WRONLY);
	CHECK(gone >= 0 && unlink(gone_path) == 0, "open and remove the device node errno %d", errno);
	char gone_link[4300];
	snprintf(gone_link, sizeof gone_link, "%s (deleted)", gone_path);

	int ours[] = { log_fd, reg, app, dupA, dupB, dupC, cx, null, dfd, pdir, pfile, p[0], p[1], frd, fwr, gone };
	const int nours = sizeof ours / sizeof ours[0];
	off_t reg_pos = 37, dup_pos = 0, app_size = 0;

	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		/* regular file */
		CHECK(lseek(reg, 0, SEEK_CUR) == reg_pos, "reg offset %ld, expected %ld", (long)lseek(reg, 0, SEEK_CUR),
		      (long)reg_pos);
		uint8_t b;
		CHECK(read(reg, &b, 1) == 1 && b == pat(reg_pos), "reg byte at %ld", (long)reg_pos);
		if (++reg_pos >= 4000)
			reg_pos = lseek(reg, 10, SEEK_SET);
		check_fl("reg", reg, O_ACCMODE | O_APPEND | O_NONBLOCK, O_RDWR);
		check_fd("reg", reg, FD_CLOEXEC * 0);
		check_link(reg, reg_path);

		/* O_APPEND */
		struct stat st;
		CHECK(fstat(app, &st) == 0 && st.st_size == app_size, "append file size %ld, expected %ld", (long)st.st_size,
		      (long)app_size);
		char rec[17];
		snprintf(rec, sizeof rec, "rec %011lu\n", (unsigned long)pass);
		CHECK(write(app, rec, 16) == 16, "append write");
		app_size += 16;
		CHECK(lseek(app, 0, SEEK_CUR) == app_size, "append offset");
		check_fl("append", app, O_ACCMODE | O_APPEND, O_WRONLY | O_APPEND);
		check_link(app, app_path);

		/* dup'ed fds share one offset */
		int which[3] = { dupA, dupB, dupC };
		for (int i = 0; i < 3; i++)
			CHECK(lseek(which[i], 0, SEEK_CUR) == dup_pos, "dup fd %d offset %ld, expected %ld", which[i],
			      (long)lseek(which[i], 0, SEEK_CUR), (long)dup_pos);
		CHECK(read(which[pass % 3], &b, 1) == 1 && b == pat(dup_pos), "dup read at %ld", (long)dup_pos);
		if (++dup_pos >= 4096)
			dup_pos = lseek(dupB, 0, SEEK_SET);
		check_link(dupC, dup_path);
		check_fd("dupA", dupA, 0);
		check_fd("dupC", dupC, 0);

		/* close-on-exec */
		check_fd("cloexec", cx, FD_CLOEXEC);
		check_fl("cloexec", cx, O_ACCMODE, O_RDONLY);
		check_link(cx, cx_path);

		/* /dev/null */
		CHECK(write(null, "0123456789", 10) == 10, "/dev/null write");
		CHECK(read(null, &b, 1) == 0, "/dev/null read");
		CHECK(fstat(null, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "/dev/null identity");
		check_fl("/dev/null", null, O_ACCMODE, O_RDWR);

		/* directory */
		CHECK(fstat(dfd, &st) == 0 && S_ISDIR(st.st_mode) && st.st_ino == dst.st_ino && st.st_dev == dst.st_dev,
		      "directory fd identity");
		int t = openat(dfd, "files-reg.dat", O_RDONLY | O_CLOEXEC);
		CHECK(t >= 0, "openat through directory fd errno %d", errno);
		close(t);
		check_link(dfd, dir);

		/* O_PATH descriptors */
		struct stat pst;
		CHECK(fstatat(pdir, "files-reg.dat", &pst, 0) == 0, "fstatat through the O_PATH directory errno %d", errno);
		check_fl("O_PATH directory", pdir, O_PATH | O_DIRECTORY, O_PATH | O_DIRECTORY);
		check_fl("O_PATH file", pfile, O_PATH, O_PATH);
		char pb;
		CHECK(read(pfile, &pb, 1) < 0 && errno == EBADF, "an O_PATH file reads");
		check_link(pfile, reg_path);

		/* the removed device node */
		CHECK(fstat(gone, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3) && (st.st_mode & 07777) == 0640 && st.st_nlink == 0,
		      "removed device node: mode %o rdev %lx links %lu", st.st_mode, (unsigned long)st.st_rdev, (unsigned long)st.st_nlink);
		CHECK(write(gone, "x", 1) == 1, "removed device node write errno %d", errno);
		check_link(gone, gone_link);

		/* pipe and FIFO with unread data */
		roll_step(&pr);
		check_fl("pipe read end", p[0], O_ACCMODE | O_NONBLOCK, O_RDONLY | O_NONBLOCK);
		check_fl("pipe write end", p[1], O_ACCMODE | O_NONBLOCK, O_WRONLY);
		roll_step(&fr);
		check_fl("fifo read end", frd, O_ACCMODE | O_NONBLOCK, O_RDONLY | O_NONBLOCK);
		check_fl("fifo write end", fwr, O_ACCMODE | O_NONBLOCK, O_WRONLY);
		check_link(frd, fifo_path);

		/* no unexpected descriptors */
		DIR *dd = opendir("/proc/self/fd");
		CHECK(dd != NULL, "opendir /proc/self/fd");
		struct dirent *de;
		int seen = 0;
		while ((de = readdir(dd))) {
			if (de->d_name[0] == '.')
				continue;
			int fd = atoi(de->d_name);
			int known = 0;
			for (int i = 0; i < ninherited; i++)
				if (inherited[i] == fd)
					known = 2;
			if (known || fd == dirfd(dd))
				continue;
			for (int i = 0; i < nours; i++)
				if (ours[i] == fd)
					known = 1;
			CHECK(known, "unexpected open fd %d", fd);
			seen++;
		}
		closedir(dd);
		CHECK(seen == nours, "%d of our %d fds are open", seen, nours);

		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(10);
	}
}
