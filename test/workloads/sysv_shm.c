/* A SysV shared memory segment attached by a process and its child (and
 * marked for removal, as is usual once everyone attached). Each pass the
 * parent writes a new value into it and the child must echo it back
 * through the segment: contents and sharing must survive. Segment 0 (the
 * first id of a fresh IPC namespace, inode 0 in /proc/PID/maps) is not
 * special-cased by the workload. Logs "OK <pass>". */
#include "common.h"
#include <signal.h>
#include <sys/prctl.h>
#include <sys/shm.h>

#define SIZE (1 << 20)

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int id = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
	CHECK(id >= 0, "shmget: errno %d", errno);
	volatile uint64_t *m = shmat(id, NULL, 0);
	CHECK(m != (void *)-1, "shmat: errno %d", errno);
	for (size_t i = 0; i < SIZE / 8; i += 512)
		m[i] = mix64(i);
	pid_t child = fork();
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;) {
			if (m[1] != m[2])
				m[2] = m[1];
			sleep_ms(1);
		}
	}
	CHECK(shmctl(id, IPC_RMID, NULL) == 0, "IPC_RMID: errno %d", errno);
	wl_log("READY");
	for (uint64_t pass = 1;; pass++) {
		for (size_t i = 512; i < SIZE / 8; i += 512)
			CHECK(m[i] == mix64(i), "segment word %zu lost", i);
		m[1] = pass;
		uint64_t t0 = mono_ns();
		while (m[2] != pass) {
			CHECK(mono_ns() - t0 < 2000000000ull, "child did not echo %lu through the segment (sees %lu)", (unsigned long)pass, (unsigned long)m[2]);
			sleep_ms(1);
		}
		wl_log("OK %lu", (unsigned long)pass);
		sleep_ms(20);
	}
}
