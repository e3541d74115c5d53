/* Big anonymous memory: argv[2] MiB (default 1024) mapped with mmap, every
 * 4 KiB page filled with words derived from its index.  Each pass verifies
 * every word of every page, then rewrites the first HOT pages with the pass
 * counter so part of the memory keeps changing.  Logs "OK <pass>" after each
 * complete verification pass (so an OK with a counter two above the last one
 * seen before a dump means a full pass ran entirely after the restore). */
#include "common.h"
#include <sys/mman.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define HOT 64

static inline uint64_t word(uint64_t page, uint64_t gen, unsigned i)
{
	return (mix64(page ^ (gen << 40)) + i * 0x9e3779b97f4a7c15ull) ^ page;
}

static void fill(uint64_t *p, uint64_t page, uint64_t gen)
{
	for (unsigned i = 0; i < WORDS; i++)
		p[i] = word(page, gen, i);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	size_t mib = argc > 2 ? strtoul(argv[2], NULL, 0) : 1024;
	size_t npages = mib * 256;
	if (npages < HOT)
		npages = HOT;
	uint64_t *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED, "mmap %zu MiB: errno %d", mib, errno);
	for (size_t pg = 0; pg < npages; pg++)
		fill(mem + pg * WORDS, pg, 0);
	uint64_t gen = 0; /* generation of the HOT pages */
	wl_log("READY pages=%zu", npages);
	for (uint64_t pass = 1;; pass++) {
		for (size_t pg = 0; pg < npages; pg++) {
			uint64_t g = pg < HOT ? gen : 0;
			const uint64_t *p = mem + pg * WORDS;
			for (unsigned i = 0; i < WORDS; i++)
				if (__builtin_expect(p[i] != word(pg, g, i), 0))
					FAIL("pass %lu page %zu word %u: %016lx != %016lx", (unsigned long)pass, pg, i,
					     (unsigned long)p[i], (unsigned long)word(pg, g, i));
		}
		gen++;
		for (size_t pg = 0; pg < HOT; pg++)
			fill(mem + pg * WORDS, pg, gen);
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(10);
	}
}
