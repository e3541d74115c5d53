/* memfd: a sealed (shrink, grow) memfd "evfd-test" of 3 pages + 100 bytes,
 * mapped MAP_SHARED and written through the mapping every pass, read back
 * through its descriptor (offset kept) and through a second, O_RDONLY
 * description; plus an unsealable memfd (F_SEAL_SEAL), and a 1 GiB memfd
 * with a few bytes of data (its holes must stay holes). Logs "OK <pass>". */
#include "common.h"
#include <sys/mman.h>
#include <sys/stat.h>

#define SZ (3 * 4096 + 100)

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int m = memfd_create("evfd-test", MFD_ALLOW_SEALING);
	int plain = memfd_create("plain", 0);
	CHECK(m >= 0 && plain >= 0, "memfd_create");
	static uint8_t init[SZ];
	for (int i = 0; i < SZ; i++)
		init[i] = (uint8_t)mix64(i);
	CHECK(write(m, init, SZ) == SZ, "write");
	CHECK(write(plain, "hello", 5) == 5, "write plain");
	uint8_t *map = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
	CHECK(map != MAP_FAILED, "mmap");
	CHECK(fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0, "seals");
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", m);
	int ro = open(self, O_RDONLY);
	CHECK(ro >= 0, "reopen");
	lseek(m, 1000, SEEK_SET);
	int big = memfd_create("sparse", 0);
	CHECK(big >= 0 && ftruncate(big, 1LL << 30) == 0 && pwrite(big, "mark", 4, 700LL << 20) == 4, "sparse memfd");
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		uint64_t i = pass % SZ;
		map[i] = (uint8_t)(init[i] + pass);
		uint8_t got;
		CHECK(pread(m, &got, 1, i) == 1 && got == map[i], "memfd and mapping differ at %llu", (unsigned long long)i);
		CHECK(pread(ro, &got, 1, i) == 1 && got == map[i], "second description differs at %llu", (unsigned long long)i);
		init[i] = map[i];
		static uint8_t all[SZ];
		CHECK(pread(m, all, SZ, 0) == SZ && memcmp(all, init, SZ) == 0, "memfd contents differ");
		CHECK(memcmp(map, init, SZ) == 0, "mapping contents differ");
		struct stat st;
		CHECK(fstat(m, &st) == 0 && st.st_size == SZ, "size %lld", (long long)st.st_size);
		CHECK(fcntl(m, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW), "seals %#x", fcntl(m, F_GET_SEALS));
		CHECK(fcntl(plain, F_GET_SEALS) == F_SEAL_SEAL, "plain seals %#x", fcntl(plain, F_GET_SEALS));
		CHECK(lseek(m, 0, SEEK_CUR) == 1000, "offset");
		CHECK((fcntl(ro, F_GETFL) & O_ACCMODE) == O_RDONLY, "ro flags");
		char l[256];
		ssize_t n = readlink(self, l, sizeof l - 1);
		CHECK(n > 0, "readlink");
		l[n] = 0;
		CHECK(strcmp(l, "/memfd:evfd-test (deleted)") == 0, "link %s", l);
		char buf[6] = { 0 };
		CHECK(pread(plain, buf, 5, 0) == 5 && strcmp(buf, "hello") == 0, "plain contents");
		CHECK(fstat(big, &st) == 0 && st.st_size == 1LL << 30 && st.st_blocks < 4096, "sparse memfd size %lld blocks %lld", (long long)st.st_size, (long long)st.st_blocks);
		CHECK(pread(big, buf, 4, 700LL << 20) == 4 && memcmp(buf, "mark", 4) == 0, "sparse memfd mark");
		wl_log("OK %llu", (unsigned long long)pass);
		sleep_ms(10);
	}
}
