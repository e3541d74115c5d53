/* A POSIX message queue (mq_open) with one message that goes round: each
 * pass receives it and sends it back, checking the queue holds exactly one.
 * phaul refuses such descriptors; the test checks the refusal is clear and
 * the process runs on untouched. Logs "OK <n>" every 100 passes. */
#include "common.h"
#include <mqueue.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct mq_attr a = { .mq_maxmsg = 8, .mq_msgsize = 64 };
	char name[64];
	snprintf(name, sizeof name, "/phaul-test-mq-%d", getpid());
	mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &a);
	CHECK(q != (mqd_t)-1, "mq_open: errno %d", errno);
	/* unlinked at once: nothing is left behind when the test kills it */
	CHECK(mq_unlink(name) == 0, "mq_unlink: errno %d", errno);
	CHECK(mq_send(q, "hello", 6, 3) == 0, "mq_send: errno %d", errno);
	wl_log("MQ %s", name);
	wl_log("READY");
	for (uint64_t i = 1;; i++) {
		char b[64];
		unsigned prio;
		ssize_t n = mq_receive(q, b, sizeof b, &prio);
		CHECK(n == 6 && prio == 3 && strcmp(b, "hello") == 0, "mq_receive: %zd errno %d", n, errno);
		CHECK(mq_send(q, b, n, prio) == 0, "mq_send: errno %d", errno);
		struct mq_attr g;
		CHECK(mq_getattr(q, &g) == 0 && g.mq_curmsgs == 1, "mq_getattr: %ld messages", (long)g.mq_curmsgs);
		if (i % 100 == 0)
			wl_log("OK %lu", (unsigned long)(i / 100));
		sleep_ms(2);
	}
}
