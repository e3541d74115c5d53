/* An io_uring instance with a read in flight, punted to an io_uring worker
 * thread (IOSQE_ASYNC on an empty pipe): the worker shows among the
 * process's threads. io_uring is refused by phaul; the worker must not make
 * the freeze wait for it. A thread of its own logs "OK <n>" and checks the
 * read is still pending. Raw system calls: no liburing. */
#include "common.h"
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int fd = (int)syscall(__NR_io_uring_setup, 8, &p);
	CHECK(fd >= 0, "io_uring_setup errno %d", errno);
	char *ring = mmap(NULL, p.sq_off.array + p.sq_entries * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
	CHECK(ring != MAP_FAILED, "mmap ring errno %d", errno);
	struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof(*sqes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
	CHECK(sqes != MAP_FAILED, "mmap sqes errno %d", errno);
	int pp[2];
	CHECK(pipe(pp) == 0, "pipe errno %d", errno);
	static char buf[16];
	memset(&sqes[0], 0, sizeof sqes[0]);
	sqes[0].opcode = IORING_OP_READ;
	sqes[0].fd = pp[0];
	sqes[0].addr = (uint64_t)(uintptr_t)buf;
	sqes[0].len = sizeof buf;
	sqes[0].flags = IOSQE_ASYNC;
	((uint32_t *)(ring + p.sq_off.array))[0] = 0;
	__atomic_store_n((uint32_t *)(ring + p.sq_off.tail), 1, __ATOMIC_RELEASE);
	CHECK(syscall(__NR_io_uring_enter, fd, 1, 0, 0, NULL, 0) == 1, "io_uring_enter errno %d", errno);
	volatile uint32_t *cq_tail = (uint32_t *)(ring + p.cq_off.tail);
	wl_log("READY");
	for (uint64_t n = 1;; n++) {
		CHECK(*cq_tail == 0, "the read completed");
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(50);
	}
}
