/* Shared memory written only by processes that live and end during the
 * migration, as postgres's per-connection backends write its shared
 * buffers: no tracker ever sees their writes.
 *
 * The parent maps 64 MiB of MAP_SHARED|MAP_ANONYMOUS memory (16384 pages)
 * and fills it. Every 2 ms it forks a child that rewrites 4 pages and
 * exits; the parent waits for it and notes, in its own private memory,
 * what each page now holds. Every fifth page a child writes gets the value
 * it had at the start back (a page that changed and changed back). Every
 * 50 children the parent checks every page against its notes (a page's
 * first, middle and last words), and logs "OK <n>". The parent itself never
 * writes the shared memory after the start. */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGES 16384
#define WORDS (4096 / 8)

static volatile uint64_t *shm;
static uint64_t *expect;

static uint64_t word(uint64_t value, unsigned i) { return mix64(value * 4099 + i); }

static void put(unsigned page, uint64_t value)
{
	volatile uint64_t *p = shm + (size_t)page * WORDS;
	for (unsigned i = 0; i < WORDS; i++)
		p[i] = word(value, i);
}

static void check(unsigned page)
{
	volatile uint64_t *p = shm + (size_t)page * WORDS;
	uint64_t v = expect[page];
	if (p[0] != word(v, 0) || p[WORDS / 2] != word(v, WORDS / 2) || p[WORDS - 1] != word(v, WORDS - 1))
		FAIL("page %u does not hold what its last writer wrote (value %lu)", page, (unsigned long)v);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	shm = mmap(NULL, (size_t)PAGES * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(shm != MAP_FAILED, "mmap: errno %d", errno);
	expect = calloc(PAGES, sizeof(*expect));
	CHECK(expect != NULL, "calloc");
	for (unsigned p = 0; p < PAGES; p++) {
		expect[p] = p + 1;
		put(p, expect[p]);
	}
	wl_log("READY");
	uint64_t n = 0;
	for (uint64_t child = 1;; child++) {
		unsigned pages[4];
		uint64_t values[4];
		for (unsigned k = 0; k < 4; k++) {
			pages[k] = mix64(child * 4 + k) % PAGES;
			values[k] = (k == 0 && child % 5 == 0) ? pages[k] + 1 : (child << 20) + k + PAGES + 1;
		}
		pid_t c = fork();
		CHECK(c >= 0, "fork: errno %d", errno);
		if (c == 0) {
			for (unsigned k = 0; k < 4; k++)
				put(pages[k], values[k]);
			_exit(0);
		}
		int status;
		CHECK(waitpid(c, &status, 0) == c, "waitpid: errno %d", errno);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d ended with status %#x", c, status);
		for (unsigned k = 0; k < 4; k++)
			expect[pages[k]] = values[k];
		if (child % 50 == 0) {
			for (unsigned p = 0; p < PAGES; p++)
				check(p);
			wl_log("OK %lu", (unsigned long)++n);
		}
		sleep_ms(2);
	}
}
