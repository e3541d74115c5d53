/* A program whose executable was removed while it runs (a package upgrade
 * replaced it): it copies itself into its directory, runs the copy (exec,
 * same pid) and removes it. Each pass checks /proc/self/exe still names
 * the removed copy and that the copy's code and data still serve: a
 * function of the program, a string in its read-only data and a counter
 * in its writable data (a page of the removed file's private mapping that
 * the process wrote). Logs "OK <pass>". */
#include "common.h"
#include <sys/stat.h>

static const char marker[] = "exe_deleted: still here";
static volatile uint64_t passes = 1000;

static uint64_t work(uint64_t x)
{
	return mix64(x) ^ 0x5a5a;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char copy[4200], want[4300];
	snprintf(copy, sizeof copy, "%s/exe-copy", wl_dir());
	if (argc < 3 || strcmp(argv[2], "copied") != 0) {
		char self[4200];
		ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
		CHECK(n > 0, "readlink exe");
		self[n] = 0;
		int in = open(self, O_RDONLY), out = open(copy, O_WRONLY | O_CREAT | O_TRUNC, 0755);
		CHECK(in >= 0 && out >= 0, "copy: errno %d", errno);
		char buf[65536];
		while ((n = read(in, buf, sizeof buf)) > 0)
			CHECK(write(out, buf, n) == n, "copy write");
		close(in);
		close(out);
		char *args[] = { copy, argv[1], "copied", NULL };
		execv(copy, args);
		CHECK(0, "execv: errno %d", errno);
	}
	CHECK(unlink(copy) == 0, "unlink copy: errno %d", errno);
	snprintf(want, sizeof want, "%s (deleted)", copy);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		char l[4300];
		ssize_t n = readlink("/proc/self/exe", l, sizeof l - 1);
		CHECK(n > 0, "readlink exe: errno %d", errno);
		l[n] = 0;
		CHECK(strcmp(l, want) == 0, "exe is %s, not %s", l, want);
		CHECK(work(pass) == (mix64(pass) ^ 0x5a5a), "code");
		CHECK(strcmp(marker, "exe_deleted: still here") == 0, "data");
		CHECK(passes == 1000 + pass - 1, "written data %lu at pass %lu", (unsigned long)passes, (unsigned long)pass);
		passes++;
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(20);
	}
}
