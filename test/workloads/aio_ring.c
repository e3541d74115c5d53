/* Kernel AIO contexts (io_setup) and POSIX AIO (glibc aio_read, threads).
 *   A: a one-page ring (127 events) whose head was moved to 125 by reaped
 *      reads, holding 4 completed reads not yet reaped (slots 125, 126, 0,
 *      1: across the wrap);
 *   B: a two-page ring (255 events), used every pass (submit 2, reap 2);
 *   a POSIX aio_read on an empty pipe, waiting in a glibc helper thread.
 * Every pass checks, without reaping, A's header and its 4 events (data,
 * obj, res, buffers), uses B, and does one POSIX aio_read of a file. Once
 * LOG.go exists: A's 4 events are reaped (in order), the pipe is written
 * and the pending aio_read completes with its bytes; logs AIO_REAPED, and
 * A is then used every pass too. Logs "OK <pass>".
 * With argument "fork": a child forked after io_setup holds the rings'
 * mappings (shared with the parent, without a context of its own), which
 * phaul must refuse to dump. */
#include "common.h"
#include <aio.h>
#include <linux/aio_abi.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

struct ring {
	unsigned id, nr, head, tail, magic, compat, incompat, header_length;
	struct io_event ev[];
};

#define MAGIC 0xa10a10a1
#define WORD "hello-aio"

static int fd;
static aio_context_t a, b;
static struct iocb held[4];
static char held_buf[4][16];

static void read_req(struct iocb *cb, char *buf, uint64_t data)
{
	memset(cb, 0, sizeof(*cb));
	cb->aio_fildes = fd;
	cb->aio_lio_opcode = IOCB_CMD_PREAD;
	cb->aio_buf = (uint64_t)(uintptr_t)buf;
	cb->aio_nbytes = strlen(WORD);
	cb->aio_data = data;
}

static void submit(aio_context_t ctx, struct iocb *cbs, int n)
{
	struct iocb *l[8];
	for (int i = 0; i < n; i++)
		l[i] = &cbs[i];
	long r = syscall(SYS_io_submit, ctx, n, l);
	CHECK(r == n, "io_submit of %d: %ld (errno %d)", n, r, errno);
}

static void reap(aio_context_t ctx, int n, struct iocb *cbs, uint64_t data0, char (*bufs)[16])
{
	struct io_event ev[8];
	long r = syscall(SYS_io_getevents, ctx, n, n, ev, NULL);
	CHECK(r == n, "io_getevents of %d: %ld (errno %d)", n, r, errno);
	for (int i = 0; i < n; i++) {
		CHECK(ev[i].data == data0 + i && ev[i].obj == (uint64_t)(uintptr_t)&cbs[i], "event %d: data %llu obj %llx, want %llu", i, (unsigned long long)ev[i].data,
		      (unsigned long long)ev[i].obj, (unsigned long long)(data0 + i));
		CHECK(ev[i].res == (long)strlen(WORD) && memcmp(bufs[i], WORD, strlen(WORD)) == 0, "event %d: res %lld", i, (long long)ev[i].res);
	}
}

/* One round trip of n reads on ctx. */
static void use(aio_context_t ctx, int n, uint64_t data0)
{
	struct iocb cbs[8];
	char bufs[8][16];
	memset(bufs, 0, sizeof(bufs));
	for (int i = 0; i < n; i++)
		read_req(&cbs[i], bufs[i], data0 + i);
	submit(ctx, cbs, n);
	reap(ctx, n, cbs, data0, bufs);
}

/* A's header and unreaped events, read from the ring as libaio would. */
static void check_held(void)
{
	struct ring *r = (struct ring *)a;
	CHECK(r->magic == MAGIC && r->nr == 127, "A: magic %#x nr %u", r->magic, r->nr);
	CHECK(r->head == 125 && r->tail == 2, "A: head %u tail %u, want 125 and 2", r->head, r->tail);
	for (unsigned i = 0; i < 4; i++) {
		struct io_event *e = &r->ev[(125 + i) % 127];
		CHECK(e->data == 1001 + i && e->obj == (uint64_t)(uintptr_t)&held[i] && e->res == (long)strlen(WORD), "A: event %u: data %llu res %lld", i,
		      (unsigned long long)e->data, (long long)e->res);
		CHECK(memcmp(held_buf[i], WORD, strlen(WORD)) == 0, "A: buffer %u", i);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char path[4400];
	snprintf(path, sizeof(path), "%s/aiofile", wl_dir());
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write(fd, WORD, strlen(WORD)) == (ssize_t)strlen(WORD), "aiofile: errno %d", errno);
	CHECK(syscall(SYS_io_setup, 16, &a) == 0 && syscall(SYS_io_setup, 100, &b) == 0, "io_setup: errno %d", errno);
	CHECK(((struct ring *)a)->nr == 127 && ((struct ring *)b)->nr == 255, "ring sizes %u %u", ((struct ring *)a)->nr, ((struct ring *)b)->nr);
	for (int i = 0; i < 25; i++)
		use(a, 5, 1);
	for (int i = 0; i < 4; i++)
		read_req(&held[i], held_buf[i], 1001 + i);
	submit(a, held, 4);
	check_held();

	int p[2];
	CHECK(pipe(p) == 0, "pipe: errno %d", errno);
	static char pend_buf[16];
	struct aiocb pend = { .aio_fildes = p[0], .aio_buf = pend_buf, .aio_nbytes = 5 };
	CHECK(aio_read(&pend) == 0, "aio_read on a pipe: errno %d", errno);

	pid_t kid = 0;
	if (argc > 2 && strcmp(argv[2], "fork") == 0) {
		kid = fork();
		CHECK(kid >= 0, "fork: errno %d", errno);
		if (kid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			for (;;)
				pause();
		}
	}

	char go[4400];
	snprintf(go, sizeof(go), "%s.go", log_path);
	int reaped = 0;
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		if (!reaped) {
			check_held();
			CHECK(aio_error(&pend) == EINPROGRESS, "the pending aio_read: aio_error %d", aio_error(&pend));
			if (access(go, F_OK) == 0) {
				reap(a, 4, held, 1001, held_buf);
				CHECK(write(p[1], "pipe!", 5) == 5, "pipe write: errno %d", errno);
				const struct aiocb *l[1] = { &pend };
				CHECK(aio_suspend(l, 1, NULL) == 0 && aio_error(&pend) == 0 && aio_return(&pend) == 5 && memcmp(pend_buf, "pipe!", 5) == 0,
				      "the pending aio_read did not complete with its bytes (errno %d)", errno);
				reaped = 1;
				wl_log("AIO_REAPED");
			}
		} else {
			use(a, 3, i * 10);
		}
		use(b, 2, i * 10);

		/* POSIX aio: glibc's helper threads do the read. */
		char buf[16] = { 0 };
		struct aiocb cb = { .aio_fildes = fd, .aio_buf = buf, .aio_nbytes = strlen(WORD) };
		CHECK(aio_read(&cb) == 0, "aio_read: errno %d", errno);
		const struct aiocb *l[1] = { &cb };
		while (aio_error(&cb) == EINPROGRESS)
			aio_suspend(l, 1, NULL);
		CHECK(aio_error(&cb) == 0 && aio_return(&cb) == (ssize_t)strlen(WORD) && memcmp(buf, WORD, strlen(WORD)) == 0, "aio_read: error %d", aio_error(&cb));

		CHECK(kid == 0 || waitpid(kid, NULL, WNOHANG) == 0, "the child died");
		wl_log("OK %lu", (unsigned long)i);
		sleep_ms(20);
	}
}
