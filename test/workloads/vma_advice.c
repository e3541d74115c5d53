/* Per-area settings made with madvise() and mlock(), which live in the
 * kernel's VMA flags and not in the memory's contents. One anonymous area
 * per setting:
 *   mlock (lo), mlock2 MLOCK_ONFAULT (lo lf, only its first half written),
 *   mlock of a PROT_NONE area (lo; mlockall() locks such areas too),
 *   MADV_DONTFORK (dc), MADV_WIPEONFORK (wf), MADV_DONTDUMP (dd),
 *   MADV_HUGEPAGE (hg), MADV_NOHUGEPAGE (nh), MADV_MERGEABLE (mg),
 *   and a plain area that must carry none of these.
 * Every pass (100 ms) checks: the written contents of every area; that the
 * /proc/self/smaps VmFlags of each area show its setting; that the unwritten
 * half of the lock-on-fault area is still not resident (a plain mlock would
 * have faulted it in); and, in a forked child, that the WIPEONFORK area
 * reads zero and the DONTFORK area is not mapped. Settings the kernel
 * refuses here with EINVAL (no THP, no KSM) are left out of the checks.
 * Logs "OK <pass>". */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096
#define AREA_PAGES 8
#define AREA_LEN (AREA_PAGES * PAGE)

enum setting { PLAIN, LOCKED, LOCK_ONFAULT, LOCKED_NONE, DONTFORK, WIPEONFORK, DONTDUMP, HUGEPAGE, NOHUGEPAGE, MERGEABLE, NSETTINGS };

struct area {
	const char *name;
	const char *flag; /* VmFlags mnemonic that must show, NULL: none expected */
	uint8_t *p;
	size_t filled; /* bytes written with the pattern; the rest reads zero */
};

static struct area areas[NSETTINGS];

/* Mnemonics that none but their own area may show. */
static const char *const advice_flags[] = { "lo", "lf", "dc", "wf", "dd", "hg", "nh", "mg" };

static inline uint8_t pat(unsigned tag, size_t i) { return (uint8_t)(mix64(tag * 1000003ull + i) >> 24); }

static void fill(struct area *a, unsigned tag)
{
	for (size_t i = 0; i < a->filled; i++)
		a->p[i] = pat(tag, i);
}

/* Only the written part is read: reading the rest would map it (the zero
 * page), which the lock-on-fault check needs left alone. */
static void verify(const struct area *a, unsigned tag)
{
	for (size_t i = 0; i < a->filled; i++)
		CHECK(a->p[i] == pat(tag, i), "%s: byte %zu is %02x, expected %02x", a->name, i, a->p[i], pat(tag, i));
}

/* Apply one setting; returns 0 when this kernel refuses it (EINVAL). */
static int apply(struct area *a, enum setting s)
{
	static const int advice[NSETTINGS] = {
		[DONTFORK] = MADV_DONTFORK, [WIPEONFORK] = MADV_WIPEONFORK, [DONTDUMP] = MADV_DONTDUMP,
		[HUGEPAGE] = MADV_HUGEPAGE, [NOHUGEPAGE] = MADV_NOHUGEPAGE, [MERGEABLE] = MADV_MERGEABLE,
	};
	int r;
	switch (s) {
	case PLAIN:
		return 1;
	case LOCKED:
		r = mlock(a->p, AREA_LEN);
		break;
	case LOCK_ONFAULT:
		r = mlock2(a->p, AREA_LEN, MLOCK_ONFAULT);
		break;
	case LOCKED_NONE:
		/* The area is locked, then its pages cannot be faulted in: ENOMEM. */
		r = mlock(a->p, AREA_LEN);
		if (r != 0 && errno == ENOMEM)
			r = 0;
		break;
	default:
		r = madvise(a->p, AREA_LEN, advice[s]);
	}
	if (r != 0 && errno == EINVAL && (s == HUGEPAGE || s == NOHUGEPAGE || s == MERGEABLE))
		return 0;
	CHECK(r == 0, "%s: setting it failed: errno %d", a->name, errno);
	return 1;
}

static void setup(void)
{
	static const struct { const char *name, *flag; } spec[NSETTINGS] = {
		[PLAIN] = { "plain", NULL },		  [LOCKED] = { "mlock", "lo" },
		[LOCK_ONFAULT] = { "mlock2 onfault", "lf" }, [LOCKED_NONE] = { "mlock PROT_NONE", "lo" },
		[DONTFORK] = { "dontfork", "dc" },
		[WIPEONFORK] = { "wipeonfork", "wf" },	  [DONTDUMP] = { "dontdump", "dd" },
		[HUGEPAGE] = { "hugepage", "hg" },	  [NOHUGEPAGE] = { "nohugepage", "nh" },
		[MERGEABLE] = { "mergeable", "mg" },
	};
	for (int s = 0; s < NSETTINGS; s++) {
		struct area *a = &areas[s];
		a->name = spec[s].name;
		a->flag = spec[s].flag;
		/* A guard page after each area keeps it from merging with the next. */
		a->p = mmap(NULL, AREA_LEN + PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(a->p != MAP_FAILED, "mmap %s", a->name);
		CHECK(mprotect(a->p + AREA_LEN, PAGE, PROT_NONE) == 0, "mprotect guard of %s", a->name);
		a->filled = s == LOCK_ONFAULT ? AREA_LEN / 2 : s == LOCKED_NONE ? 0 : AREA_LEN;
		if (s == LOCKED_NONE)
			CHECK(mprotect(a->p, AREA_LEN, PROT_NONE) == 0, "mprotect %s", a->name);
		if (!apply(a, s))
			a->flag = NULL;
		fill(a, 100 + s);
	}
}

static char smaps_buf[4 << 20];

/* The VmFlags line of the smaps entry that holds addr, or NULL. */
static const char *vm_flags_of(const char *smaps, uintptr_t addr)
{
	int inside = 0;
	for (const char *line = smaps; *line;) {
		const char *nl = strchr(line, '\n');
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2)
			inside = s <= addr && addr < e;
		else if (inside && strncmp(line, "VmFlags:", 8) == 0)
			return line + 8;
		if (!nl)
			break;
		line = nl + 1;
	}
	return NULL;
}

/* Does the VmFlags list (up to its newline) hold the two-letter mnemonic? */
static int has_flag(const char *flags, const char *m)
{
	for (const char *f = flags; *f && *f != '\n'; f++)
		if (f[0] == m[0] && f[1] == m[1] && (f == flags || f[-1] == ' ') && (f[2] == ' ' || f[2] == '\n' || !f[2]))
			return 1;
	return 0;
}

static void check_flags(void)
{
	ssize_t n = read_file("/proc/self/smaps", smaps_buf, sizeof(smaps_buf) - 1);
	CHECK(n > 0, "read /proc/self/smaps");
	smaps_buf[n] = 0;
	for (int s = 0; s < NSETTINGS; s++) {
		const struct area *a = &areas[s];
		const char *flags = vm_flags_of(smaps_buf, (uintptr_t)a->p);
		CHECK(flags, "%s at %p: no VmFlags in /proc/self/smaps", a->name, (void *)a->p);
		int len = (int)(strchr(flags, '\n') ? strchr(flags, '\n') - flags : (long)strlen(flags));
		if (a->flag)
			CHECK(has_flag(flags, a->flag), "%s at %p: VmFlags%.*s lack %s", a->name, (void *)a->p, len, flags, a->flag);
		for (size_t i = 0; i < sizeof(advice_flags) / sizeof(advice_flags[0]); i++) {
			const char *m = advice_flags[i];
			int own = a->flag && (strcmp(m, a->flag) == 0 || (s == LOCK_ONFAULT && strcmp(m, "lo") == 0));
			CHECK(own || !has_flag(flags, m), "%s at %p: VmFlags%.*s show %s, never set there", a->name, (void *)a->p, len,
			      flags, m);
		}
	}
}

/* Lock-on-fault locks what is touched, and must not fault the rest in. */
static void check_onfault_lazy(void)
{
	const struct area *a = &areas[LOCK_ONFAULT];
	unsigned char vec[AREA_PAGES];
	CHECK(mincore(a->p, AREA_LEN, vec) == 0, "mincore %s: errno %d", a->name, errno);
	for (int i = 0; i < AREA_PAGES; i++) {
		int want = (size_t)i * PAGE < a->filled;
		CHECK((vec[i] & 1) == want, "%s: page %d is %sresident", a->name, i, want ? "not " : "");
	}
}

/* Child's verdict (exit status): 0 fine, 2 the wiped area is not zero, 3 the
 * area not to be forked is mapped. */
static int child_checks(void)
{
	const struct area *w = &areas[WIPEONFORK];
	for (size_t i = 0; i < AREA_LEN; i++)
		if (w->p[i] != 0)
			return 2;
	unsigned char vec;
	if (mincore(areas[DONTFORK].p, PAGE, &vec) == 0 || errno != ENOMEM)
		return 3;
	return 0;
}

static void check_fork(void)
{
	pid_t c = fork();
	CHECK(c >= 0, "fork: errno %d", errno);
	if (c == 0)
		_exit(child_checks());
	int st;
	pid_t r;
	while ((r = waitpid(c, &st, 0)) < 0 && errno == EINTR)
		;
	CHECK(r == c, "waitpid: errno %d", errno);
	CHECK(WIFEXITED(st), "child ended by signal %d", WTERMSIG(st));
	CHECK(WEXITSTATUS(st) != 2, "wipeonfork: the child sees the area's old contents");
	CHECK(WEXITSTATUS(st) != 3, "dontfork: the area is mapped in the child");
	CHECK(WEXITSTATUS(st) == 0, "child exited with %d", WEXITSTATUS(st));
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	setup();
	check_flags();
	check_onfault_lazy();
	check_fork();
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		for (int s = 0; s < NSETTINGS; s++)
			verify(&areas[s], 100 + s);
		check_flags();
		check_onfault_lazy();
		check_fork();
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(100);
	}
}
