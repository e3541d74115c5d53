/* Signal state that must survive a dump/restore:
 *  - handlers: SIGUSR1 (SA_SIGINFO|SA_RESTART, mask {SIGPROF,SIGWINCH}),
 *    SIGALRM (SA_RESTART|SA_ONSTACK, mask {SIGUSR1}), SIGUSR2 (SA_NODEFER),
 *    SIGRTMIN+1..3 (SA_SIGINFO), SIGPIPE ignored; read back with sigaction
 *    every pass and compared.
 *  - pending while blocked: process-wide SIGUSR2 and SIGRTMIN+1 queued twice
 *    (values 11, 22); thread-directed SIGRTMIN+2 (33) to a helper thread and
 *    SIGRTMIN+3 (44) to main.  sigpending() must show exactly these.
 *  - sigaltstack on main; SIGALRM must run on it.
 *  - setitimer(ITIMER_REAL, 10 ms interval) keeps firing into a counter.
 *  - SIGUSR1 raised every pass: its handler must see its sa_mask applied.
 * Logs "OK <n> alarms=<a>" when the itimer fired since the previous OK.
 * When the file "<log>.go" appears, main and the helper unblock everything,
 * check the pending signals arrive with their siginfo values (in order), log
 * "DELIVERED", and carry on with nothing pending. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/time.h>

#ifndef SA_RESTORER
#define SA_RESTORER 0x04000000
#endif

#define ALTSZ (64 * 1024)
static char altstack[ALTSZ];
static volatile uint64_t alarms, usr1_count, usr2_count;
static volatile int usr1_mask_ok = 1, alrm_stack_ok = 1;
static pid_t main_tid, helper_tid;
static volatile int sent;
static volatile int phase; /* 0: pending held; 1: main delivered; 2: helper delivered */
/* Set by main just before it unblocks (and so consumes the shared pending
 * signals): a helper sample taken while it is set may see them half gone. */
static volatile int unblocking;

struct rec {
	int sig, val, code;
	pid_t tid;
};
static struct rec recs[32];
static volatile int nrecs;

static void h_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGPROF) || !sigismember(&cur, SIGWINCH) || si->si_code != SI_TKILL ||
	    si->si_pid != getpid())
		usr1_mask_ok = 0;
	usr1_count++;
}

static void h_alrm(int sig)
{
	(void)sig;
	char here;
	stack_t ss;
	if (&here < altstack || &here >= altstack + ALTSZ)
		alrm_stack_ok = 0;
	if (sigaltstack(NULL, &ss) != 0 || !(ss.ss_flags & SS_ONSTACK))
		alrm_stack_ok = 0;
	alarms++;
}

static void h_usr2(int sig)
{
	(void)sig;
	usr2_count++;
}

static void h_rt(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	int i = __atomic_fetch_add(&nrecs, 1, __ATOMIC_SEQ_CST);
	if (i < 32)
		recs[i] = (struct rec){ sig, si->si_value.sival_int, si->si_code, (pid_t)syscall(SYS_gettid) };
}

struct want_action {
	int sig;
	void *handler;
	int flags;
	int mask[3];
};
static struct want_action actions[8];
static int nactions;

static void install(int sig, void *handler, int flags, int m0, int m1)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	if (flags & SA_SIGINFO)
		sa.sa_sigaction = handler;
	else
		sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (m0)
		sigaddset(&sa.sa_mask, m0);
	if (m1)
		sigaddset(&sa.sa_mask, m1);
	CHECK(sigaction(sig, &sa, NULL) == 0, "sigaction %d", sig);
	actions[nactions++] = (struct want_action){ sig, handler, flags, { m0, m1, 0 } };
}

static void check_actions(void)
{
	for (int i = 0; i < nactions; i++) {
		struct want_action *w = &actions[i];
		struct sigaction sa;
		CHECK(sigaction(w->sig, NULL, &sa) == 0, "sigaction read %d", w->sig);
		void *h = (w->flags & SA_SIGINFO) ? (void *)sa.sa_sigaction : (void *)sa.sa_handler;
		CHECK(h == w->handler, "signal %d handler %p, expected %p", w->sig, h, w->handler);
		CHECK((sa.sa_flags & ~SA_RESTORER) == w->flags, "signal %d flags %#x, expected %#x", w->sig,
		      sa.sa_flags & ~SA_RESTORER, w->flags);
		for (int s = 1; s <= 64; s++) {
			if (s == 32 || s == 33)
				continue;
			int want = (s == w->mask[0] || s == w->mask[1]);
			CHECK(!!sigismember(&sa.sa_mask, s) == want, "signal %d sa_mask: %d member=%d", w->sig, s, !want);
		}
	}
}

/* Compare a signal set with a list of members for 1..64 (32/33 and `skip` ignored). */
static void check_set(const char *what, const sigset_t *set, const int *members, int skip)
{
	for (int s = 1; s <= 64; s++) {
		if (s == 32 || s == 33 || s == skip)
			continue;
		int want = 0;
		for (const int *m = members; *m; m++)
			if (*m == s)
				want = 1;
		CHECK(!!sigismember(set, s) == want, "%s: signal %d is %s", what, s, want ? "missing" : "unexpected");
	}
}

static void set_from(sigset_t *set, const int *members)
{
	sigemptyset(set);
	for (const int *m = members; *m; m++)
		sigaddset(set, *m);
}

static int main_blocked[4], helper_blocked[6], main_pending[4], helper_pending[4];
static const int none[1] = { 0 };

static void *helper(void *a)
{
	(void)a;
	sigset_t set, cur;
	set_from(&set, helper_blocked);
	CHECK(pthread_sigmask(SIG_SETMASK, &set, NULL) == 0, "helper sigmask");
	helper_tid = syscall(SYS_gettid);
	int delivered = 0;
	for (;;) {
		int ph = phase;
		pthread_sigmask(SIG_BLOCK, NULL, &cur);
		sigpending(&set);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		int racing = unblocking && ph == 0;
		if (sent && (ph == 0 || !delivered)) {
			check_set("helper mask", &cur, helper_blocked, 0);
			if (!racing)
				check_set("helper pending", &set, ph == 0 ? helper_pending : (int[]){ SIGRTMIN + 2, 0 }, SIGALRM);
		}
		if (phase >= 1 && !delivered) {
			sigset_t un;
			sigemptyset(&un);
			sigaddset(&un, SIGRTMIN + 2);
			pthread_sigmask(SIG_UNBLOCK, &un, NULL);
			delivered = 1;
			phase = 2;
		}
		if (delivered) {
			sigpending(&set);
			check_set("helper pending after delivery", &set, none, SIGALRM);
		}
		sleep_ms(10);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char go_path[4200];
	snprintf(go_path, sizeof go_path, "%s.go", argv[1]);
	main_tid = syscall(SYS_gettid);
	const int RT1 = SIGRTMIN + 1, RT2 = SIGRTMIN + 2, RT3 = SIGRTMIN + 3;
	memcpy(main_blocked, (int[]){ SIGUSR2, RT1, RT3, 0 }, sizeof main_blocked);
	memcpy(helper_blocked, (int[]){ SIGUSR2, RT1, RT2, SIGALRM, SIGUSR1, 0 }, sizeof helper_blocked);
	memcpy(main_pending, (int[]){ SIGUSR2, RT1, RT3, 0 }, sizeof main_pending);
	memcpy(helper_pending, (int[]){ SIGUSR2, RT1, RT2, 0 }, sizeof helper_pending);

	stack_t ss = { .ss_sp = altstack, .ss_size = ALTSZ, .ss_flags = 0 };
	CHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack");

	sigset_t set;
	set_from(&set, main_blocked);
	CHECK(pthread_sigmask(SIG_SETMASK, &set, NULL) == 0, "main sigmask");

	install(SIGUSR1, (void *)h_usr1, SA_SIGINFO | SA_RESTART, SIGPROF, SIGWINCH);
	install(SIGALRM, (void *)h_alrm, SA_RESTART | SA_ONSTACK, SIGUSR1, 0);
	install(SIGUSR2, (void *)h_usr2, SA_NODEFER, 0, 0);
	install(RT1, (void *)h_rt, SA_SIGINFO, 0, 0);
	install(RT2, (void *)h_rt, SA_SIGINFO, 0, 0);
	install(RT3, (void *)h_rt, SA_SIGINFO, 0, 0);
	CHECK(signal(SIGPIPE, SIG_IGN) != SIG_ERR, "ignore SIGPIPE");

	pthread_t th;
	CHECK(pthread_create(&th, NULL, helper, NULL) == 0, "pthread_create");
	while (!helper_tid)
		sleep_ms(1);
	sleep_ms(20); /* helper has applied its mask */

	CHECK(kill(getpid(), SIGUSR2) == 0, "kill SIGUSR2");
	CHECK(sigqueue(getpid(), RT1, (union sigval){ .sival_int = 11 }) == 0, "sigqueue 11");
	CHECK(sigqueue(getpid(), RT1, (union sigval){ .sival_int = 22 }) == 0, "sigqueue 22");
	CHECK(pthread_sigqueue(th, RT2, (union sigval){ .sival_int = 33 }) == 0, "pthread_sigqueue 33");
	CHECK(pthread_sigqueue(pthread_self(), RT3, (union sigval){ .sival_int = 44 }) == 0, "pthread_sigqueue 44");

	sent = 1;
	struct itimerval it = { { 0, 10000 }, { 0, 10000 } };
	CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer");

	uint64_t n = 0, last_alarms = 0, stalled = 0;
	wl_log("READY");
	for (;;) {
		sleep_ms(10);
		check_actions();
		struct sigaction sa;
		CHECK(sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN, "SIGPIPE no longer ignored");
		stack_t cur_ss;
		CHECK(sigaltstack(NULL, &cur_ss) == 0, "sigaltstack read");
		CHECK(cur_ss.ss_sp == altstack && cur_ss.ss_size == ALTSZ && cur_ss.ss_flags == 0,
		      "sigaltstack sp=%p size=%zu flags=%d", cur_ss.ss_sp, cur_ss.ss_size, cur_ss.ss_flags);
		struct itimerval g;
		CHECK(getitimer(ITIMER_REAL, &g) == 0, "getitimer");
		CHECK(g.it_interval.tv_sec == 0 && g.it_interval.tv_usec == 10000, "itimer interval %ld.%06ld",
		      (long)g.it_interval.tv_sec, (long)g.it_interval.tv_usec);
		CHECK(alrm_stack_ok, "SIGALRM handler did not run on the alternate stack");

		uint64_t before = usr1_count;
		CHECK(pthread_kill(pthread_self(), SIGUSR1) == 0, "pthread_kill SIGUSR1");
		CHECK(usr1_count == before + 1, "SIGUSR1 not delivered synchronously");
		CHECK(usr1_mask_ok, "SIGUSR1 handler: sa_mask not applied or bad siginfo");

		sigset_t cur, pend;
		pthread_sigmask(SIG_BLOCK, NULL, &cur);
		sigpending(&pend);
		if (phase == 0) {
			check_set("main mask", &cur, main_blocked, 0);
			check_set("main pending", &pend, main_pending, SIGALRM);
			CHECK(nrecs == 0 && usr2_count == 0, "a blocked signal was delivered");
			if (access(go_path, F_OK) == 0) {
				sigset_t un;
				set_from(&un, main_blocked);
				unblocking = 1;
				__atomic_thread_fence(__ATOMIC_SEQ_CST);
				pthread_sigmask(SIG_UNBLOCK, &un, NULL);
				/* delivered on return from the syscall above, lowest number first */
				CHECK(usr2_count == 1, "SIGUSR2 delivered %lu times", (unsigned long)usr2_count);
				CHECK(nrecs == 3, "%d RT signals delivered to main, expected 3", nrecs);
				int wv[3] = { 11, 22, 44 }, ws[3] = { RT1, RT1, RT3 };
				for (int i = 0; i < 3; i++)
					CHECK(recs[i].sig == ws[i] && recs[i].val == wv[i] && recs[i].code == (i < 2 ? SI_QUEUE : SI_QUEUE) &&
						      recs[i].tid == main_tid,
					      "delivery %d: sig %d value %d code %d tid %d, expected sig %d value %d", i, recs[i].sig,
					      recs[i].val, recs[i].code, recs[i].tid, ws[i], wv[i]);
				phase = 1;
			}
		} else {
			check_set("main mask after unblock", &cur, none, 0);
			check_set("main pending after unblock", &pend, none, SIGALRM);
			if (phase == 2 && nrecs == 4) {
				CHECK(recs[3].sig == RT2 && recs[3].val == 33 && recs[3].tid == helper_tid,
				      "helper delivery: sig %d value %d tid %d", recs[3].sig, recs[3].val, recs[3].tid);
				wl_log("DELIVERED");
				nrecs = 5;
			}
			CHECK(nrecs <= 5, "extra RT signal delivered");
		}

		if (alarms <= last_alarms) {
			CHECK(++stalled < 300, "itimer stopped firing (alarms=%lu)", (unsigned long)alarms);
			continue;
		}
		stalled = 0;
		last_alarms = alarms;
		wl_log("OK %lu alarms=%lu", (unsigned long)++n, (unsigned long)alarms);
	}
}
