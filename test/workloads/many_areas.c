/* Thousands of memory areas, as a runtime with many small mappings has:
 *
 *   many_areas LOG [N]
 *
 * Maps N (default 3000) areas of two pages each, the first page
 * read-write, the second made read-only after a pattern was written into
 * it, so that no two neighbouring areas merge (2N kernel areas). Every
 * 2 ms it rewrites one area's first page; every 200 ms it checks every
 * area (value, pattern, the second page still read-only per
 * /proc/self/maps) and that the number of lines of /proc/self/maps is the
 * one it had at start. Logs "OK <n>" after each full check. */
#include "common.h"
#include <sys/mman.h>

static int count_maps(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	CHECK(f != NULL, "maps: errno %d", errno);
	int n = 0, c;
	while ((c = fgetc(f)) != EOF)
		n += c == '\n';
	fclose(f);
	return n;
}

/* Read-only areas inside [base, base + n * 8192) per /proc/self/maps. */
static int count_ro(const char *base, int n)
{
	FILE *f = fopen("/proc/self/maps", "r");
	CHECK(f != NULL, "maps");
	char line[256];
	int ro = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long s, e;
		char perm[5];
		if (sscanf(line, "%lx-%lx %4s", &s, &e, perm) == 3 && s >= (unsigned long)base && e <= (unsigned long)(base + (size_t)n * 8192))
			ro += strcmp(perm, "r--p") == 0;
	}
	fclose(f);
	return ro;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int n = argc > 2 ? atoi(argv[2]) : 3000;
	char **area = calloc(n, sizeof *area);
	uint64_t *gen = calloc(n, sizeof *gen);
	CHECK(area && gen, "calloc");
	/* one reservation cut into pieces keeps the areas side by side */
	char *base = mmap(NULL, (size_t)n * 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(base != MAP_FAILED, "mmap: errno %d", errno);
	for (int i = 0; i < n; i++) {
		area[i] = base + (size_t)i * 8192;
		*(uint64_t *)area[i] = mix64(i);
		for (int k = 0; k < 512; k++)
			((uint64_t *)(area[i] + 4096))[k] = mix64(i * 1000 + k);
		CHECK(mprotect(area[i] + 4096, 4096, PROT_READ) == 0, "mprotect: errno %d", errno);
	}
	int lines = count_maps();
	CHECK(lines >= 2 * n, "only %d areas", lines);
	wl_log("AREAS %d", lines);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		int w = pass % n;
		gen[w]++;
		*(uint64_t *)area[w] = mix64(w) + gen[w];
		if (pass % 100 == 0) {
			for (int i = 0; i < n; i++) {
				CHECK(*(uint64_t *)area[i] == mix64(i) + gen[i], "area %d: wrong value", i);
				CHECK(((uint64_t *)(area[i] + 4096))[i % 512] == mix64(i * 1000 + i % 512), "area %d: wrong pattern", i);
			}
			/* A read of /proc/self/maps that a dump froze half-way goes on
			 * in the restored process's text at the same byte offset: its
			 * count may be off by a line. A second read is whole. */
			int ro = count_ro(base, n), now = count_maps();
			if (ro != n || now != lines) {
				ro = count_ro(base, n);
				now = count_maps();
			}
			CHECK(ro == n, "%d read-only areas, expected %d", ro, n);
			CHECK(now == lines, "%d areas, %d at start", now, lines);
			wl_log("OK %lu", (unsigned long)(pass / 100));
		}
		sleep_ms(2);
	}
}
