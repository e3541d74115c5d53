/* A child process whose main thread has exited (pthread_exit from main)
 * while another thread runs on: its leader is a zombie, the process is not.
 * The root logs "CHILD <pid>" and waits; the child's running thread logs
 * "OK <n>". */
#include "common.h"
#include <pthread.h>

static void *worker(void *arg)
{
	(void)arg;
	for (uint64_t n = 1;; n++) {
		wl_log("OK %lu", (unsigned long)n);
		sleep_ms(50);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pid_t c = fork();
	CHECK(c >= 0, "fork errno %d", errno);
	if (c == 0) {
		pthread_t t;
		CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
		pthread_exit(NULL);
	}
	wl_log("CHILD %d", (int)c);
	wl_log("READY");
	for (;;)
		pause();
}
