/* Memory dirtier with a downtime probe, for migration benchmarks.
 *
 *   dirtier LOG MIB MB_PER_S [GAP_THRESHOLD_US]
 *
 * Maps MIB MiB of anonymous memory, fills every 4 KiB page with words derived
 * from its index and a per-page generation, then every 1 ms:
 *   - rewrites pages (round robin) so that MB_PER_S megabytes (10^6) per
 *     second are written, paced by CLOCK_MONOTONIC;
 *   - verifies a slice of the pages (the whole area every ~5 s, at least 32
 *     pages per tick) against their generation;
 *   - tracks the gap between consecutive ticks like tick.c: a gap above the
 *     threshold (default 10000 us) is logged as "GAP <us>".
 * Logs "OK <n> max_gap_us=<g> written_mb=<w> verified=<v>" every 100 ticks. */
#include "common.h"
#include <sys/mman.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static inline uint64_t word(uint64_t page, uint64_t gen, unsigned i)
{
	return (mix64(page ^ (gen << 40)) + i * 0x9e3779b97f4a7c15ull) ^ page;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 4) {
		wl_log("FAIL usage: dirtier LOG MIB MB_PER_S [GAP_THRESHOLD_US]");
		return 2;
	}
	size_t mib = strtoul(argv[2], NULL, 0);
	double rate = strtod(argv[3], NULL); /* MB/s */
	uint64_t threshold_us = argc > 4 ? strtoull(argv[4], NULL, 0) : 10000;
	size_t npages = mib * 256;
	if (npages < 1)
		npages = 1;
	uint64_t *mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED, "mmap %zu MiB: errno %d", mib, errno);
	uint32_t *gen = calloc(npages, sizeof(uint32_t));
	CHECK(gen != NULL, "calloc");
	for (size_t pg = 0; pg < npages; pg++)
		for (unsigned i = 0; i < WORDS; i++)
			mem[pg * WORDS + i] = word(pg, 0, i);

	size_t verify_per_tick = npages / 5000 + 1;
	if (verify_per_tick < 32)
		verify_per_tick = 32;
	size_t wcur = 0, vcur = 0;
	uint64_t written = 0, verified = 0, max_gap = 0;
	uint64_t start = mono_ns(), last = start;
	wl_log("READY pages=%zu", npages);
	for (uint64_t tick = 1, n = 0;; tick++) {
		struct timespec ts = { 0, 1000000L };
		while (nanosleep(&ts, &ts) != 0)
			CHECK(errno == EINTR, "nanosleep errno %d", errno);
		uint64_t now = mono_ns();
		CHECK(now >= last, "monotonic clock went backwards");
		uint64_t gap_us = (now - last) / 1000;
		last = now;
		if (gap_us > max_gap)
			max_gap = gap_us;
		if (gap_us > threshold_us)
			wl_log("GAP %lu at %lu", (unsigned long)gap_us, (unsigned long)(now / 1000));

		/* pages owed since the start, at most 4096 per tick */
		uint64_t due = (uint64_t)(rate * 1e6 * ((double)(now - start) / 1e9) / PAGE);
		uint64_t todo = due > written ? due - written : 0;
		if (todo > 4096) {
			written += todo - 4096; /* forgive a backlog (after a freeze) */
			todo = 4096;
		}
		for (uint64_t k = 0; k < todo; k++, written++) {
			size_t pg = wcur++ % npages;
			uint32_t g = ++gen[pg];
			uint64_t *p = mem + pg * WORDS;
			for (unsigned i = 0; i < WORDS; i++)
				p[i] = word(pg, g, i);
		}
		for (size_t k = 0; k < verify_per_tick; k++) {
			size_t pg = vcur++ % npages;
			const uint64_t *p = mem + pg * WORDS;
			for (unsigned i = 0; i < WORDS; i++)
				if (__builtin_expect(p[i] != word(pg, gen[pg], i), 0))
					FAIL("page %zu word %u gen %u: %016lx != %016lx", pg, i, gen[pg], (unsigned long)p[i],
					     (unsigned long)word(pg, gen[pg], i));
			verified++;
		}
		if (tick % 100 == 0)
			wl_log("OK %lu max_gap_us=%lu written_mb=%lu verified=%lu", (unsigned long)++n, (unsigned long)max_gap,
			       (unsigned long)(written * PAGE / 1000000), (unsigned long)verified);
	}
}
