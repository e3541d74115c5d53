/* Huge PROT_NONE reservations, as MariaDB makes (8 TiB for its buffer
 * pool), and a file made with O_TMPFILE, as its temporary files are:
 *   - 8 TiB PROT_NONE with MAP_NORESERVE, never touched;
 *   - 64 GiB that held 16 pages of data before it was made PROT_NONE
 *     (read back through /proc/self/mem, which reads through protections);
 *   - 2 MiB of data kept PROT_NONE but made writable for a moment at
 *     every pass to change one page (more than phaul leaves unarmed:
 *     from its second round on it is tracked as any other area);
 *     the reservations keep VmFlags "nr" and this area "ac" (it was
 *     writable once: charged), else it could merge with the 64 GiB one;
 *   - an O_TMPFILE file in /tmp holding 64 KiB, written at every pass.
 * Checks each on every pass and logs "OK <n>". */
#include "common.h"
#include <fcntl.h>
#include <sys/mman.h>

#define TIB (1UL << 40)
#define GIB (1UL << 30)
#define SPOTS 16
#define FLIP_PAGES 512

static char *none, *held, *flip;
static uint32_t flip_gen[FLIP_PAGES];
static uint64_t flip_word(int i) { return mix64(0xf11b + i * 7919 + ((uint64_t)flip_gen[i] << 32)); }
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
	if (strstr(buf, head) != NULL)
		return 1;
	/* For the failure message: the areas around the one missing. */
	for (char *l = buf, *nl; *l; l = nl + 1) {
		nl = strchr(l, '\n');
		if (!nl)
			break;
		unsigned long s, e;
		if (sscanf(l, "%lx-%lx", &s, &e) == 2 && e + GIB >= (unsigned long)addr && s <= (unsigned long)addr + len + GIB)
			wl_log("MAP %.*s", (int)(nl - l), l);
	}
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int near = 0;
	while (f && fgets(line, sizeof line, f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
			near = e + GIB >= (unsigned long)addr && s <= (unsigned long)addr + len + GIB;
		else if (near && strncmp(line, "VmFlags", 7) == 0)
			wl_log("FLAGS %lx %.*s", s, (int)strcspn(line, "\n"), line);
	}
	if (f)
		fclose(f);
	return 0;
}

/* The VmFlags of the area starting at addr ("" if none was read whole). */
static void vm_flags_of(void *addr, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	CHECK(f != NULL, "smaps errno %d", errno);
	char line[512];
	int in = 0;
	out[0] = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = s == (unsigned long)addr;
		/* a line cut short (smaps sometimes ends early) does not count */
		else if (in && strncmp(line, "VmFlags:", 8) == 0 && strchr(line, '\n'))
			snprintf(out, len, "%s", line + 8);
	}
	fclose(f);
}

/* Does the area at addr have VmFlags token tok (or lack it, want 0)?
 * The commit flags "nr" and "ac" must come back as they were. */
static void check_flag(void *addr, const char *tok, int want, const char *what)
{
	char flags[256], t[8];
	snprintf(t, sizeof t, " %s ", tok);
	for (int tries = 0; tries < 4; tries++) {
		vm_flags_of(addr, flags, sizeof flags);
		if (flags[0])
			break;
	}
	CHECK(flags[0], "no VmFlags for the %s", what);
	size_t n = strcspn(flags, "\n");
	flags[n] = ' ';
	flags[n + 1] = 0;
	CHECK((strstr(flags, t) != NULL) == want, "the %s %s VmFlags %s: %s", what, want ? "lacks" : "has", tok, flags);
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
	flip = mmap(NULL, FLIP_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(flip != MAP_FAILED, "mmap flip errno %d", errno);
	for (int i = 0; i < FLIP_PAGES; i++)
		*(uint64_t *)(flip + i * 4096) = flip_word(i);
	CHECK(mprotect(flip, FLIP_PAGES * 4096, PROT_NONE) == 0, "mprotect flip errno %d", errno);
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
		for (int i = 0; i < FLIP_PAGES; i++) {
			uint64_t w = 0;
			CHECK(pread(mem_fd, &w, 8, (off_t)(uintptr_t)(flip + i * 4096)) == 8, "reading flip errno %d", errno);
			CHECK(w == flip_word(i), "flip page %d is %#lx, generation %u", i, (unsigned long)w, flip_gen[i]);
		}
		CHECK(mapped(flip, FLIP_PAGES * 4096, "---p"), "the flip area changed");
		if (n % 10 == 1) {
			check_flag(none, "nr", 1, "8 TiB reservation");
			check_flag(held, "nr", 1, "64 GiB PROT_NONE area");
			check_flag(flip, "ac", 1, "flip area");
			check_flag(flip, "nr", 0, "flip area");
		}
		int f = n % FLIP_PAGES;
		flip_gen[f]++;
		CHECK(mprotect(flip, FLIP_PAGES * 4096, PROT_READ | PROT_WRITE) == 0, "mprotect flip rw errno %d", errno);
		*(uint64_t *)(flip + f * 4096) = flip_word(f);
		CHECK(mprotect(flip, FLIP_PAGES * 4096, PROT_NONE) == 0, "mprotect flip none errno %d", errno);
		CHECK(pread(tmp_fd, back, sizeof back, 0) == (ssize_t)sizeof back, "pread O_TMPFILE errno %d", errno);
		CHECK(memcmp(back, data, sizeof data) == 0, "O_TMPFILE contents changed");
		CHECK(pwrite(tmp_fd, &n, 8, sizeof data - 8) == 8, "pwrite O_TMPFILE errno %d", errno);
		memcpy(data + sizeof data - 8, &n, 8);
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(20);
	}
}
