/* The working directory is removed while in use: each pass checks that "."
 * still works (stat, st_nlink 0), that files cannot be made in it, and that
 * /proc/self/cwd names it with " (deleted)". Logs "OK <pass>". */
#include "common.h"
#include <sys/stat.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char dir[4300], want[4400], got[4400];
	snprintf(dir, sizeof(dir), "%s/gone", wl_dir());
	CHECK(mkdir(dir, 0755) == 0 && chdir(dir) == 0 && rmdir(dir) == 0, "mkdir/chdir/rmdir: errno %d", errno);
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
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
