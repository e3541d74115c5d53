/* A file removed under the name it was opened by while another hard link
 * to it stays (open A, link A to B, unlink A): the descriptor must still be
 * that very file. Each pass writes its number through the descriptor at
 * its offset, reads it back through B, and checks the inode and the link
 * count; logs "OK <n>". */
#include "common.h"
#include <sys/stat.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char *dir = wl_dir();
	char a[4200], b[4200];
	snprintf(a, sizeof a, "%s/linked-a", dir);
	snprintf(b, sizeof b, "%s/linked-b", dir);
	unlink(a);
	unlink(b);
	int fd = open(a, O_RDWR | O_CREAT | O_TRUNC, 0640);
	CHECK(fd >= 0, "open errno %d", errno);
	CHECK(link(a, b) == 0 && unlink(a) == 0, "link/unlink errno %d", errno);
	struct stat st0;
	CHECK(fstat(fd, &st0) == 0, "fstat");
	wl_log("READY");
	for (uint64_t n = 1;; n++) {
		char w[32], r[32] = { 0 };
		int len = snprintf(w, sizeof w, "%020lu", (unsigned long)n);
		CHECK(write(fd, w, len) == len, "write errno %d", errno);
		int bf = open(b, O_RDONLY);
		CHECK(bf >= 0, "open %s errno %d", b, errno);
		CHECK(pread(bf, r, len, (n - 1) * len) == len && memcmp(r, w, len) == 0, "what the descriptor wrote is not in %s", b);
		close(bf);
		struct stat st;
		CHECK(fstat(fd, &st) == 0 && st.st_ino == st0.st_ino && st.st_dev == st0.st_dev && st.st_nlink == 1, "the descriptor is another file now (inode %lu, was %lu; links %lu)",
		      (unsigned long)st.st_ino, (unsigned long)st0.st_ino, (unsigned long)st.st_nlink);
		CHECK(lseek(fd, 0, SEEK_CUR) == (off_t)(n * len), "offset %ld", (long)lseek(fd, 0, SEEK_CUR));
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(20);
	}
}
