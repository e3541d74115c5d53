/* Files unlinked while open: "gone" (O_RDWR, offset kept, mapped
 * MAP_SHARED and written through the mapping) and a second O_WRONLY|O_APPEND
 * description of it, both opened then unlinked. Every pass appends a
 * record, rewrites a byte through the mapping and checks contents, size,
 * nlink 0, the link name and the offset. Also "sparse": 4 GiB long, a few
 * bytes of data at its start, middle and end, unlinked: its data and its
 * holes must stay (a few blocks allocated, not 4 GiB). Logs "OK <pass>". */
#include "common.h"
#include <sys/mman.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char path[4200], want[4300];
	snprintf(path, sizeof path, "%s/gone", wl_dir());
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
	int app = open(path, O_WRONLY | O_APPEND);
	CHECK(fd >= 0 && app >= 0, "open");
	static uint8_t cur[8192];
	for (int i = 0; i < 8192; i++)
		cur[i] = (uint8_t)mix64(i + 7);
	CHECK(write(fd, cur, 8192) == 8192, "write");
	uint8_t *map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(map != MAP_FAILED, "mmap");
	CHECK(unlink(path) == 0, "unlink");
	snprintf(want, sizeof want, "%s (deleted)", path);
	lseek(fd, 77, SEEK_SET);
	off_t size = 8192;
	char sp_path[4200];
	snprintf(sp_path, sizeof sp_path, "%s/sparse", wl_dir());
	int sparse = open(sp_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	const off_t SPARSE = 4LL << 30, marks[3] = { 0, 2LL << 30, (4LL << 30) - 5 };
	CHECK(sparse >= 0 && ftruncate(sparse, SPARSE) == 0, "sparse file");
	for (int k = 0; k < 3; k++)
		CHECK(pwrite(sparse, "mark", 4, marks[k]) == 4, "sparse write");
	CHECK(unlink(sp_path) == 0, "unlink sparse");
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		uint64_t rec = pass;
		CHECK(write(app, &rec, 8) == 8, "append");
		size += 8;
		uint64_t i = (pass * 31) % 8192;
		map[i] ^= 0x5a;
		cur[i] ^= 0x5a;
		struct stat st;
		CHECK(fstat(fd, &st) == 0, "fstat");
		CHECK(st.st_size == size && st.st_nlink == 0 && (st.st_mode & 07777) == 0640, "size %lld nlink %lu mode %o", (long long)st.st_size,
		      (unsigned long)st.st_nlink, st.st_mode & 07777);
		static uint8_t buf[8192];
		CHECK(pread(fd, buf, 8192, 0) == 8192 && memcmp(buf, cur, 8192) == 0, "contents");
		CHECK(pread(fd, &rec, 8, size - 8) == 8 && rec == pass, "last record %llu", (unsigned long long)rec);
		CHECK(lseek(fd, 0, SEEK_CUR) == 77, "offset");
		CHECK((fcntl(app, F_GETFL) & (O_ACCMODE | O_APPEND)) == (O_WRONLY | O_APPEND), "app flags");
		char p[64], l[4300];
		snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
		ssize_t n = readlink(p, l, sizeof l - 1);
		CHECK(n > 0, "readlink");
		l[n] = 0;
		CHECK(strcmp(l, want) == 0, "link %s", l);
		CHECK(fstat(sparse, &st) == 0 && st.st_size == SPARSE && st.st_nlink == 0, "sparse size %lld", (long long)st.st_size);
		CHECK(st.st_blocks < 4096, "sparse file has %lld blocks: its holes were filled", (long long)st.st_blocks);
		for (int k = 0; k < 3; k++) {
			char m[5] = { 0 };
			CHECK(pread(sparse, m, 4, marks[k]) == 4 && strcmp(m, "mark") == 0, "sparse mark %d", k);
		}
		uint64_t z = 1;
		CHECK(pread(sparse, &z, 8, 1LL << 30) == 8 && z == 0, "sparse hole reads %llx", (unsigned long long)z);
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(10);
	}
}
