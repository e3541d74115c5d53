/* Address-space churn during a migration: 64 slots, each either empty or
 * an anonymous mapping of 1-64 pages filled from (slot, generation), but
 * for one page never written, which must read as zeros (the kernel may give
 * a new mapping addresses an old one had: none of its bytes may show). Every
 * 2 ms one slot is unmapped and mapped again with a new size and
 * generation (at whatever address the kernel picks), and one slot grows in
 * place with mremap; every live slot is checked in full each pass. The
 * layout therefore differs between every pre-copy round and the final one.
 *   mmap_churn LOG [MIB_BASE]
 * MIB_BASE (default 64) MiB of static anonymous memory is kept beside the
 * slots so that rounds take long enough for the layout to change inside them.
 * Logs "OK <pass>" every 50 passes. */
#include "common.h"
#include <sys/mman.h>

#define PAGE 4096
#define SLOTS 64

struct slot {
	uint64_t *p;
	size_t pages;
	size_t hole; /* the page never written (pages: none) */
	uint32_t gen;
};

static struct slot slots[SLOTS];

static uint64_t val(unsigned s, uint32_t gen, size_t i)
{
	return mix64(((uint64_t)s << 48) ^ ((uint64_t)gen << 24) ^ i);
}

static void fill(unsigned s, size_t from)
{
	struct slot *sl = &slots[s];
	for (size_t i = from * (PAGE / 8); i < sl->pages * (PAGE / 8); i++)
		if (i / (PAGE / 8) != sl->hole)
			sl->p[i] = val(s, sl->gen, i);
}

static void check(unsigned s)
{
	struct slot *sl = &slots[s];
	for (size_t i = 0; i < sl->pages * (PAGE / 8); i++)
		if (__builtin_expect(sl->p[i] != (i / (PAGE / 8) == sl->hole ? 0 : val(s, sl->gen, i)), 0))
			FAIL("slot %u gen %u word %zu: %016lx != %016lx", s, sl->gen, i, (unsigned long)sl->p[i],
			     (unsigned long)val(s, sl->gen, i));
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	size_t base_mib = argc > 2 ? strtoul(argv[2], NULL, 0) : 64;
	size_t base_words = base_mib * (1 << 20) / 8;
	uint64_t *base = mmap(NULL, base_mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(base != MAP_FAILED, "mmap base: errno %d", errno);
	for (size_t i = 0; i < base_words; i++)
		base[i] = mix64(i);
	uint64_t rng = 0x1234567;
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		rng = mix64(rng + pass);
		unsigned s = rng % SLOTS;
		struct slot *sl = &slots[s];
		if (sl->p)
			CHECK(munmap(sl->p, sl->pages * PAGE) == 0, "munmap: errno %d", errno);
		sl->pages = 1 + (rng >> 8) % 64;
		sl->hole = (rng >> 16) % sl->pages;
		sl->gen++;
		sl->p = mmap(NULL, sl->pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(sl->p != MAP_FAILED, "mmap: errno %d", errno);
		fill(s, 0);
		/* grow another slot (moving it if it must) */
		unsigned g = (rng >> 20) % SLOTS;
		if (slots[g].p && slots[g].pages < 128) {
			size_t old = slots[g].pages;
			void *np = mremap(slots[g].p, old * PAGE, (old + 1) * PAGE, MREMAP_MAYMOVE);
			CHECK(np != MAP_FAILED, "mremap: errno %d", errno);
			slots[g].p = np;
			slots[g].pages = old + 1;
			fill(g, old);
		}
		for (unsigned k = 0; k < SLOTS; k++)
			if (slots[k].p)
				check(k);
		for (size_t i = (pass * 4096) % base_words, n = 0; n < 4096; n++, i = (i + 1) % base_words)
			if (__builtin_expect(base[i] != mix64(i), 0))
				FAIL("base word %zu changed", i);
		if (pass % 50 == 0)
			wl_log("OK %lu", (unsigned long)(pass / 50));
		struct timespec ts = { 0, 2000000L };
		nanosleep(&ts, NULL);
	}
}
