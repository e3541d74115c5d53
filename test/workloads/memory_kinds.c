/* One of each kind of memory; every pass (10 ms) checks contents, that each
 * region still sits at its original address with its original protection and
 * sharing in /proc/self/maps, and that the vDSO clock works:
 *   private anon (16 pages), shared anon (MAP_SHARED|MAP_ANONYMOUS, 4 pages),
 *   private file mapping with COW changes (file must keep its old bytes),
 *   shared file mapping (writes through it show up in pread of the file),
 *   heap grown with sbrk, a PROT_NONE guard page (touching it must SIGSEGV),
 *   a stack array in main's frame, the vDSO (clock_gettime vs raw syscall).
 * Logs "OK <pass>". Files live next to the log file. */
#include "common.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define PAGE 4096

struct region {
	const char *name;
	uintptr_t start;
	size_t len;
	const char *perms; /* as in /proc/self/maps, e.g. "rw-p" */
};

static struct region regions[16];
static int nregions;

static void add_region(const char *name, void *p, size_t len, const char *perms)
{
	regions[nregions++] = (struct region){ name, (uintptr_t)p, len, perms };
}

static char maps_buf[1 << 20];

/* Every region must lie inside one maps line with the expected permissions. */
static void check_maps(void)
{
	ssize_t n = read_file("/proc/self/maps", maps_buf, sizeof(maps_buf) - 1);
	CHECK(n > 0, "read /proc/self/maps");
	maps_buf[n] = 0;
	for (int r = 0; r < nregions; r++) {
		struct region *rg = &regions[r];
		int found = 0;
		for (char *line = maps_buf; *line;) {
			char *nl = strchr(line, '\n');
			unsigned long s, e;
			char perms[8];
			if (sscanf(line, "%lx-%lx %7s", &s, &e, perms) == 3 && s <= rg->start && rg->start + rg->len <= e) {
				CHECK(strcmp(perms, rg->perms) == 0, "%s at %lx: perms %s, expected %s", rg->name,
				      (unsigned long)rg->start, perms, rg->perms);
				found = 1;
				break;
			}
			if (!nl)
				break;
			line = nl + 1;
		}
		CHECK(found, "%s at %lx+%zx: no mapping in /proc/self/maps", rg->name, (unsigned long)rg->start, rg->len);
	}
}

static inline uint8_t pat(unsigned tag, size_t i) { return (uint8_t)(mix64(tag * 1000003ull + i) >> 24); }

static void fill(void *p, size_t len, unsigned tag)
{
	for (size_t i = 0; i < len; i++)
		((uint8_t *)p)[i] = pat(tag, i);
}

static void verify_off(const char *what, const void *p, size_t len, unsigned tag, size_t off)
{
	for (size_t i = 0; i < len; i++)
		CHECK(((const uint8_t *)p)[i] == pat(tag, off + i), "%s: byte %zu is %02x, expected %02x", what, i,
		      ((const uint8_t *)p)[i], pat(tag, off + i));
}

static void verify(const char *what, const void *p, size_t len, unsigned tag) { verify_off(what, p, len, tag, 0); }

static sigjmp_buf segv_jmp;
static volatile int segv_armed;
static void on_segv(int sig)
{
	(void)sig;
	if (segv_armed)
		siglongjmp(segv_jmp, 1);
	signal(SIGSEGV, SIG_DFL);
}

static int make_file(const char *dir, const char *name, size_t len, unsigned tag, char *path_out)
{
	snprintf(path_out, 4096, "%s/%s", dir, name);
	int fd = open(path_out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0, "create %s: errno %d", path_out, errno);
	uint8_t *buf = malloc(len);
	fill(buf, len, tag);
	CHECK(write(fd, buf, len) == (ssize_t)len, "write %s", path_out);
	free(buf);
	return fd;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char *dir = wl_dir();
	static char priv_path[4096], shared_path[4096];

	/* private anonymous */
	uint8_t *anon = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(anon != MAP_FAILED, "mmap anon");
	fill(anon, 16 * PAGE, 1);
	add_region("private anon", anon, 16 * PAGE, "rw-p");

	/* shared anonymous */
	uint8_t *shanon = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(shanon != MAP_FAILED, "mmap shared anon");
	fill(shanon, 4 * PAGE, 2);
	add_region("shared anon", shanon, 4 * PAGE, "rw-s");

	/* private file mapping: page 0 untouched (file bytes), page 1 COW-modified */
	int pfd = make_file(dir, "mk-private.dat", 4 * PAGE, 3, priv_path);
	uint8_t *pmap = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, pfd, 0);
	CHECK(pmap != MAP_FAILED, "mmap private file");
	close(pfd);
	fill(pmap + PAGE, PAGE, 4);
	add_region("private file", pmap, 4 * PAGE, "rw-p");

	/* shared file mapping, read-only view of a second page as well */
	int sfd = make_file(dir, "mk-shared.dat", 2 * PAGE, 5, shared_path);
	volatile uint64_t *smap = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	CHECK(smap != MAP_FAILED, "mmap shared file");
	add_region("shared file", (void *)smap, 2 * PAGE, "rw-s");

	/* heap via brk */
	uint8_t *heap0 = sbrk(0);
	uint8_t *heap = sbrk(8 * PAGE);
	CHECK(heap != (void *)-1, "sbrk");
	fill(heap, 8 * PAGE, 6);
	uint8_t *brk_end = sbrk(0);
	CHECK(brk_end >= heap0 + 8 * PAGE, "sbrk did not grow");

	/* read-only anon with contents, and a PROT_NONE guard page between two rw pages */
	uint8_t *ro = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED, "mmap ro");
	fill(ro, 2 * PAGE, 7);
	CHECK(mprotect(ro, 2 * PAGE, PROT_READ) == 0, "mprotect ro");
	add_region("read-only anon", ro, 2 * PAGE, "r--p");
	uint8_t *g = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(g != MAP_FAILED, "mmap guard");
	fill(g, PAGE, 8);
	fill(g + 2 * PAGE, PAGE, 9);
	CHECK(mprotect(g + PAGE, PAGE, PROT_NONE) == 0, "mprotect guard");
	add_region("guard low", g, PAGE, "rw-p");
	add_region("guard", g + PAGE, PAGE, "---p");
	add_region("guard high", g + 2 * PAGE, PAGE, "rw-p");

	/* stack array */
	volatile uint8_t stack_arr[3 * PAGE];
	fill((void *)stack_arr, sizeof stack_arr, 10);

	/* vDSO */
	uintptr_t vdso = getauxval(AT_SYSINFO_EHDR);
	CHECK(vdso != 0, "no AT_SYSINFO_EHDR");
	add_region("vdso", (void *)vdso, PAGE, "r-xp");

	struct sigaction sa = { .sa_handler = on_segv, .sa_flags = SA_NODEFER };
	sigaction(SIGSEGV, &sa, NULL);

	check_maps();
	uint64_t last_mono = 0;
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		verify("private anon", anon, 16 * PAGE, 1);
		verify("shared anon", shanon, 4 * PAGE, 2);
		verify("private file page 0", pmap, PAGE, 3);
		verify("private file COW page 1", pmap + PAGE, PAGE, 4);
		verify_off("private file pages 2-3", pmap + 2 * PAGE, 2 * PAGE, 3, 2 * PAGE);
		{
			uint8_t buf[PAGE];
			CHECK(pread(sfd, buf, PAGE, PAGE) == PAGE, "pread shared file");
			/* the file must still hold its original bytes where the private mapping did COW */
			int fd = open(priv_path, O_RDONLY | O_CLOEXEC);
			CHECK(fd >= 0, "open %s", priv_path);
			CHECK(pread(fd, buf, PAGE, PAGE) == PAGE, "pread private file");
			close(fd);
			for (size_t i = 0; i < PAGE; i++)
				CHECK(buf[i] == pat(3, PAGE + i), "COW change leaked into %s at %zu", priv_path, PAGE + i);
		}
		/* shared file: page 1 untouched, page 0 word 0 = pass counter written through the mapping */
		for (size_t i = 0; i < PAGE; i++)
			CHECK(((volatile uint8_t *)smap)[PAGE + i] == pat(5, PAGE + i), "shared file page 1 byte %zu", i);
		if (pass > 1)
			CHECK(smap[0] == pass - 1, "shared file word 0 is %lu, expected %lu", (unsigned long)smap[0],
			      (unsigned long)(pass - 1));
		smap[0] = pass;
		{
			uint64_t v;
			CHECK(pread(sfd, &v, 8, 0) == 8, "pread shared file");
			CHECK(v == pass, "write through shared mapping not in file: %lu != %lu", (unsigned long)v,
			      (unsigned long)pass);
		}
		verify("heap", heap, 8 * PAGE, 6);
		CHECK(sbrk(0) == brk_end, "brk moved: %p != %p", sbrk(0), (void *)brk_end);
		verify("read-only anon", ro, 2 * PAGE, 7);
		verify("guard low", g, PAGE, 8);
		verify("guard high", g + 2 * PAGE, PAGE, 9);
		verify("stack array", (void *)stack_arr, sizeof stack_arr, 10);
		segv_armed = 1;
		if (sigsetjmp(segv_jmp, 1) == 0) {
			volatile uint8_t x = g[PAGE];
			(void)x;
			FAIL("reading the PROT_NONE guard page did not fault");
		}
		segv_armed = 0;
		check_maps();
		/* vDSO clock vs the real syscall */
		struct timespec a, b;
		CHECK(clock_gettime(CLOCK_MONOTONIC, &a) == 0, "vdso clock_gettime");
		CHECK(syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &b) == 0, "clock_gettime syscall");
		uint64_t an = a.tv_sec * 1000000000ull + a.tv_nsec, bn = b.tv_sec * 1000000000ull + b.tv_nsec;
		CHECK(an >= last_mono, "vdso monotonic clock went backwards");
		CHECK(bn >= an && bn - an < 1000000000ull, "vdso clock %lu vs syscall %lu", (unsigned long)an,
		      (unsigned long)bn);
		last_mono = an;
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(10);
	}
}
