/* Huge PROT_NONE reservations, as MariaDB makes (8 TiB for its buffer
 * pool), and a file made with O_TMPFILE, as its temporary files are:
 *   - 8 TiB PROT_NONE with MAP_NORESERVE, never touched;
 *   - 64 GiB that held 16 pages of data before it was made PROT_NONE
 *     (read back through /proc/self/mem, which reads through protections);
 *   - an O_TMPFILE file in /tmp holding 64 KiB, written at every pass.
 * Checks each on every pass and logs "OK <n>". */
#include "common.h"
#include <fcntl.h>
#include <sys/mman.h>

#define TIB (1UL << 40)
#define GIB (1UL << 30)
#define SPOTS 16

static char *none, *held;
static int mem_fd, tmp_fd;

static uint64_t spot_word(int i) { return mix64(0x5eed + i); }
static size_t spot_at(int i) { return (size_t)i * (4 * GIB) + 4096 * i; }

/* Is [addr, addr + len) one mapping of /proc/self/maps with this protection? */
static int mapped(void *addr, size_t len, const char *prot)
{
	static char buf[1 << 20];
	ssize_t n = read_file("/proc/self/maps", buf, sizeof(buf) - 1);
	CHECK(n > 0, "reading maps errno %d", errno);
	buf[n] = 0;
	char head[64];
	snprintf(head, sizeof head, "%lx-%lx %s", (unsigned long)addr, (unsigned long)addr + len, prot);
	return strstr(buf, head) != NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	held = mmap(NULL, 64 * GIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(held != MAP_FAILED, "mmap 64 GiB errno %d", errno);
	/* A gigabyte below it: side by side, the two would merge into one. */
	none = mmap(held - 8 * TIB - GIB, 8 * TIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
	CHECK(none != MAP_FAILED, "mmap 8 TiB errno %d", errno);
	for (int i = 0; i < SPOTS; i++)
		*(uint64_t *)(held + spot_at(i)) = spot_word(i);
	CHECK(mprotect(held, 64 * GIB, PROT_NONE) == 0, "mprotect errno %d", errno);
	mem_fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	CHECK(mem_fd >= 0, "open /proc/self/mem errno %d", errno);
	tmp_fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	CHECK(tmp_fd >= 0, "open O_TMPFILE errno %d", errno);
	static uint8_t data[65536], back[65536];
	for (size_t i = 0; i < sizeof data; i++)
		data[i] = (uint8_t)mix64(i);
	CHECK(pwrite(tmp_fd, data, sizeof data, 0) == (ssize_t)sizeof data, "pwrite errno %d", errno);
	wl_log("READY");
	for (uint64_t n = 1;; n++) {
		CHECK(mapped(none, 8 * TIB, "---p"), "the 8 TiB reservation changed");
		CHECK(mapped(held, 64 * GIB, "---p"), "the 64 GiB PROT_NONE area changed");
		for (int i = 0; i < SPOTS; i++) {
			uint64_t w = 0;
			CHECK(pread(mem_fd, &w, 8, (off_t)(uintptr_t)(held + spot_at(i))) == 8, "reading PROT_NONE data errno %d", errno);
			CHECK(w == spot_word(i), "PROT_NONE data %d is %#lx", i, (unsigned long)w);
		}
		CHECK(pread(tmp_fd, back, sizeof back, 0) == (ssize_t)sizeof back, "pread O_TMPFILE errno %d", errno);
		CHECK(memcmp(back, data, sizeof data) == 0, "O_TMPFILE contents changed");
		CHECK(pwrite(tmp_fd, &n, 8, sizeof data - 8) == 8, "pwrite O_TMPFILE errno %d", errno);
		memcpy(data + sizeof data - 8, &n, 8);
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(20);
	}
}
