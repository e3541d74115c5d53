/* The working directory is removed while in use: each pass checks that "."
 * still works (stat, st_nlink 0), that files cannot be made in it, and that
 * /proc/self/cwd names it with " (deleted)". The same for a descriptor open
 * on another removed directory ("gone2"). Logs "OK <pass>". */
#include "common.h"
#include <sys/stat.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char dir[4300], want[4400], got[4400];
	snprintf(dir, sizeof(dir), "%s/gone", wl_dir());
	CHECK(mkdir(dir, 0755) == 0 && chdir(dir) == 0 && rmdir(dir) == 0, "mkdir/chdir/rmdir: errno %d", errno);
	char dir2[4300], want2[4400];
	snprintf(dir2, sizeof(dir2), "%s/gone2", wl_dir());
	CHECK(mkdir(dir2, 0755) == 0, "mkdir gone2: errno %d", errno);
	int dfd = open(dir2, O_RDONLY | O_DIRECTORY);
	CHECK(dfd >= 0 && rmdir(dir2) == 0, "open/rmdir gone2: errno %d", errno);
	snprintf(want2, sizeof(want2), "%s (deleted)", dir2);
	snprintf(want, sizeof(want), "%s (deleted)", dir);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		struct stat st;
		CHECK(stat(".", &st) == 0 && S_ISDIR(st.st_mode) && st.st_nlink == 0, "stat . : errno %d nlink %lu", errno, (unsigned long)st.st_nlink);
		errno = 0;
		CHECK(open("f", O_CREAT | O_WRONLY, 0644) == -1 && errno == ENOENT, "a file could be made in the deleted directory (errno %d)", errno);
		ssize_t n = readlink("/proc/self/cwd", got, sizeof(got) - 1);
		CHECK(n > 0, "readlink /proc/self/cwd");
		got[n] = 0;
		CHECK(strcmp(got, want) == 0, "cwd is %s, want %s", got, want);
		struct stat ds;
		CHECK(fstat(dfd, &ds) == 0 && ds.st_nlink == 0 && S_ISDIR(ds.st_mode), "removed directory fd: nlink %lu", (unsigned long)ds.st_nlink);
		errno = 0;
		CHECK(openat(dfd, "x", O_RDWR | O_CREAT, 0600) < 0 && errno == ENOENT, "a file was made in the removed directory (errno %d)", errno);
		char l[4400], p[64];
		snprintf(p, sizeof(p), "/proc/self/fd/%d", dfd);
		ssize_t m = readlink(p, l, sizeof(l) - 1);
		CHECK(m > 0, "readlink fd");
		l[m] = 0;
		CHECK(strcmp(l, want2) == 0, "fd names %s, not %s", l, want2);
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
