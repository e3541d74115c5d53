/* mlockall(MCL_CURRENT | MCL_FUTURE), with MCL_ONFAULT when argv[2] is
 * "onfault": what the process maps later is locked too (the mm's default
 * flags, which no file shows). Each pass maps a page and checks that smaps
 * shows it locked ("lo", and "lf" for on-fault locking, none of it
 * otherwise), then unmaps it; logs "OK <n>". */
#include "common.h"
#include <sys/mman.h>

#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

static void flags_of(void *addr, char *out, size_t cap)
{
	static char buf[1 << 20];
	ssize_t n = read_file("/proc/self/smaps", buf, sizeof(buf) - 1);
	CHECK(n > 0, "reading smaps errno %d", errno);
	buf[n] = 0;
	char head[32];
	snprintf(head, sizeof head, "%lx-", (unsigned long)addr);
	char *at = strstr(buf, head);
	CHECK(at != NULL, "the new page is not in smaps");
	char *f = strstr(at, "VmFlags:");
	CHECK(f != NULL, "no VmFlags");
	char *end = strchr(f, '\n');
	size_t len = end ? (size_t)(end - f) : strlen(f);
	snprintf(out, cap, " %.*s ", (int)(len > cap - 3 ? cap - 3 : len), f + 8);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int onfault = argc > 2 && strcmp(argv[2], "onfault") == 0;
	CHECK(mlockall(MCL_CURRENT | MCL_FUTURE | (onfault ? MCL_ONFAULT : 0)) == 0, "mlockall errno %d", errno);
	wl_log("READY");
	for (uint64_t n = 1;; n++) {
		char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(p != MAP_FAILED, "mmap errno %d", errno);
		char fl[512];
		flags_of(p, fl, sizeof fl);
		CHECK(strstr(fl, " lo ") != NULL, "a page mapped now is not locked: VmFlags%s", fl);
		CHECK((strstr(fl, " lf ") != NULL) == onfault, "a page mapped now is %slocked on fault: VmFlags%s", onfault ? "not " : "", fl);
		munmap(p, 4096);
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(50);
	}
}
