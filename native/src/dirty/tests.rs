//! Tracker tests on a real child: a forked copy of the test process that
//! loops on commands from a pipe (raw syscalls only after fork), writing
//! known pages of a known area, mapping new areas, dropping pages.

use super::*;
use crate::freeze;
use crate::inject::{find_syscall_insn, Injector};
use crate::memory;
use crate::sys::{self, nr, PAGE_SIZE};
use std::collections::BTreeSet;

const NR_PIPE2: i64 = 293;
const NR_POLL: i64 = 7;
const NR_CLOCK_GETTIME: i64 = 228;

const OP_WRITE: u64 = 1; // (addr, pages): write a fresh counter into each page; reply ns taken
const OP_MMAP: u64 = 2; // (pages, _): map and touch a new area; reply its address
const OP_DONTNEED: u64 = 3; // (addr, pages)
const OP_EXIT: u64 = 4;
const OP_WRITE_STRIDE: u64 = 5; // (addr, pages | stride << 32): one write every `stride` pages

pub struct Child {
    pub pid: Pid,
    cmd_w: i32,
    ack_r: i32,
}

fn now_ns() -> u64 {
    let mut ts = [0i64; 2];
    unsafe {
        let _ = sys::raw(NR_CLOCK_GETTIME, &[1, ts.as_mut_ptr() as u64]);
    }
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

unsafe fn full_read(fd: i32, buf: *mut u8, len: usize) -> bool {
    let mut got = 0;
    while got < len {
        match sys::raw(nr::READ, &[fd as u64, buf.add(got) as u64, (len - got) as u64]) {
            Ok(0) => return false,
            Ok(n) => got += n as usize,
            Err(4) => continue,
            Err(_) => return false,
        }
    }
    true
}

unsafe fn child_main(cmd_r: i32, ack_w: i32) -> ! {
    let mut counter: u64 = 0x1000;
    loop {
        let mut c = [0u64; 3];
        if !full_read(cmd_r, c.as_mut_ptr() as *mut u8, 24) {
            let _ = sys::raw(nr::EXIT_GROUP, &[1]);
        }
        let reply: u64 = match c[0] {
            OP_WRITE | OP_WRITE_STRIDE => {
                counter += 1;
                let (n, stride) = if c[0] == OP_WRITE { (c[2], 1) } else { (c[2] & 0xffff_ffff, c[2] >> 32) };
                let t = now_ns();
                for i in 0..n {
                    std::ptr::write_volatile((c[1] + i * stride * PAGE_SIZE) as *mut u64, counter);
                }
                now_ns() - t
            }
            OP_MMAP => {
                let len = c[1] * PAGE_SIZE;
                match sys::raw(nr::MMAP, &[0, len, 3, 0x22, u64::MAX, 0]) {
                    Ok(a) => {
                        for i in 0..c[1] {
                            std::ptr::write_volatile((a as u64 + i * PAGE_SIZE) as *mut u64, 0xabcd);
                        }
                        a as u64
                    }
                    Err(_) => 0,
                }
            }
            OP_DONTNEED => sys::raw(nr::MADVISE, &[c[1], c[2] * PAGE_SIZE, 4]).map(|_| 0).unwrap_or(1),
            OP_EXIT => {
                let _ = sys::raw(nr::EXIT_GROUP, &[0]);
                0
            }
            _ => u64::MAX,
        };
        let _ = sys::raw(nr::WRITE, &[ack_w as u64, &reply as *const u64 as u64, 8]);
    }
}

impl Child {
    /// Fork a child owning a private anonymous area of `pages` pages (all
    /// present), returned with the child.
    pub fn spawn(pages: u64) -> (Child, u64) {
        let len = pages * PAGE_SIZE;
        let region = sys::call("mmap", nr::MMAP, &[0, len, 3, 0x22, u64::MAX, 0]).unwrap() as u64;
        for i in 0..pages {
            unsafe { std::ptr::write_volatile((region + i * PAGE_SIZE) as *mut u64, 0xaa) };
        }
        let mut cmd = [0i32; 2];
        let mut ack = [0i32; 2];
        sys::call("pipe2", NR_PIPE2, &[cmd.as_mut_ptr() as u64, 0o2000000]).unwrap();
        sys::call("pipe2", NR_PIPE2, &[ack.as_mut_ptr() as u64, 0o2000000]).unwrap();
        let pid = sys::call("fork", nr::CLONE, &[17, 0, 0, 0, 0]).unwrap() as Pid;
        if pid == 0 {
            unsafe { child_main(cmd[0], ack[1]) };
        }
        let _ = sys::call("close", nr::CLOSE, &[cmd[0] as u64]);
        let _ = sys::call("close", nr::CLOSE, &[ack[1] as u64]);
        let _ = sys::call("munmap", nr::MUNMAP, &[region, len]);
        (Child { pid, cmd_w: cmd[1], ack_r: ack[0] }, region)
    }

    pub fn cmd(&self, op: u64, a: u64, b: u64) -> u64 {
        let c = [op, a, b];
        sys::call("write", nr::WRITE, &[self.cmd_w as u64, c.as_ptr() as u64, 24]).expect("command to child");
        #[repr(C)]
        struct PollFd {
            fd: i32,
            events: i16,
            revents: i16,
        }
        let mut p = PollFd { fd: self.ack_r, events: 1, revents: 0 };
        let n = sys::call("poll", NR_POLL, &[&mut p as *mut PollFd as u64, 1, 60_000]).expect("poll");
        assert_eq!(n, 1, "child {} does not answer (hung?)", self.pid);
        let mut r = 0u64;
        assert!(unsafe { full_read(self.ack_r, &mut r as *mut u64 as *mut u8, 8) }, "child {} died", self.pid);
        r
    }

    pub fn write(&self, addr: u64, pages: u64) -> u64 {
        self.cmd(OP_WRITE, addr, pages)
    }

    pub fn alive(&self) -> bool {
        crate::proc::exists(self.pid) && crate::proc::stat(self.pid).map(|(_, f)| f.get(2).map(|s| s != "Z").unwrap_or(false)).unwrap_or(false)
    }

    pub fn read_u64(&self, addr: u64) -> u64 {
        let mem = crate::inject::open_mem(self.pid, false).unwrap();
        let mut b = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut b, addr).unwrap();
        u64::from_le_bytes(b)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = sys::kill(self.pid, 9);
        let mut st = 0i32;
        unsafe {
            let _ = sys::raw(nr::WAIT4, &[self.pid as u64, &mut st as *mut i32 as u64, 0x40000000, 0]);
        }
        let _ = sys::call("close", nr::CLOSE, &[self.cmd_w as u64]);
        let _ = sys::call("close", nr::CLOSE, &[self.ack_r as u64]);
    }
}

/// Freeze the child, start a tracker through an injector on its leader, resume.
pub fn start_tracking(m: Method, pid: Pid) -> Tracker {
    let mut fz = freeze::freeze_tree(pid).expect("freeze");
    let insn = find_syscall_insn(pid).expect("syscall insn");
    let t0 = &fz.procs[0].threads[0];
    let mut inj = Injector::new(pid, t0.tid, insn, t0.regs.rewound(true), t0.sigmask).expect("injector");
    let scratch = inj.scratch_range();
    let vmas: Vec<_> = memory::vmas(pid).unwrap().into_iter().filter(|v| Some((v.start, v.end)) != scratch).collect();
    let tr = Tracker::start(m, pid, &mut inj, &vmas);
    inj.finish().expect("injector finish");
    fz.resume();
    tr.expect("tracker start")
}

fn collect(tr: &mut Tracker, pid: Pid) -> Vec<u64> {
    let mut out = vec![0xdead]; // must be cleared
    tr.collect(&memory::vmas(pid).unwrap(), &mut out).expect("collect");
    assert!(out.windows(2).all(|w| w[0] < w[1]), "output sorted without duplicates");
    out
}

fn within(out: &[u64], start: u64, pages: u64) -> BTreeSet<u64> {
    out.iter().copied().filter(|&a| a >= start && a < start + pages * PAGE_SIZE).map(|a| (a - start) / PAGE_SIZE).collect()
}

fn set(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

fn scenario(m: Method) {
    let (c, region) = Child::spawn(64);
    let pid = c.pid;
    let fds_before = crate::proc::fds(pid).unwrap();
    let mut tr = start_tracking(m, pid);
    assert_eq!(tr.method(), m);

    // Nothing written yet (stack pages of the child may show, the area not).
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, region, 64), set(&[]), "{}: first collect", m.name());

    c.write(region + 3 * PAGE_SIZE, 1);
    c.write(region + 10 * PAGE_SIZE, 3);
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, region, 64), set(&[3, 10, 11, 12]), "{}: written pages", m.name());
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, region, 64), set(&[]), "{}: nothing written since", m.name());

    // A new area is reported whole, then tracked.
    let na = c.cmd(OP_MMAP, 8, 0);
    assert_ne!(na, 0);
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, na, 8), set(&[0, 1, 2, 3, 4, 5, 6, 7]), "{}: new area", m.name());
    c.write(na + 2 * PAGE_SIZE, 2);
    c.write(region + 63 * PAGE_SIZE, 1);
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, na, 8), set(&[2, 3]), "{}: new area tracked", m.name());
    assert_eq!(within(&out, region, 64), set(&[63]), "{}: old area still tracked", m.name());

    // MADV_DONTNEED: reported once (contents became zero), then not.
    assert_eq!(c.cmd(OP_DONTNEED, region + 20 * PAGE_SIZE, 2), 0);
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, region, 64), set(&[20, 21]), "{}: dropped pages", m.name());
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, region, 64), set(&[]), "{}: dropped pages once", m.name());

    // Final round on the frozen target.
    c.write(region + 5 * PAGE_SIZE, 1);
    {
        let mut fz = freeze::freeze_tree(pid).expect("freeze");
        tr.last_round();
        let out = collect(&mut tr, pid);
        let got = within(&out, region, 64);
        assert!(got.contains(&5), "{}: frozen round {:?}", m.name(), got);
        if m == Method::UffdWp {
            assert_eq!(got, set(&[5]));
        }
        fz.resume();
    }

    // Stop: the child runs on and writes everything without trouble.
    tr.stop();
    let v = c.write(region, 64);
    let _ = v;
    let val = c.read_u64(region + 7 * PAGE_SIZE);
    for i in 0..64 {
        assert_eq!(c.read_u64(region + i * PAGE_SIZE), val);
    }
    c.write(na, 8);
    assert!(c.alive());
    // The injected userfaultfd was closed in the child (it may hold others,
    // inherited from the test process at fork).
    assert_eq!(crate::proc::fds(pid).unwrap(), fds_before, "{}: child's descriptors", m.name());
}

#[test]
fn uffd_wp_tracks_a_child() {
    if !Method::UffdWp.available() {
        eprintln!("uffd-wp not available here: skipped");
        return;
    }
    scenario(Method::UffdWp);
}

/// The layout a round goes by is read while the target runs and may be
/// stale when areas get registered. Registering stale bounds would split
/// the target's areas (its next mremap of one fails with EFAULT): an area
/// whose bounds changed is left unregistered that round, and reported whole.
#[test]
fn uffd_wp_stale_layout_splits_nothing() {
    if !Method::UffdWp.available() {
        return;
    }
    let (c, _region) = Child::spawn(4);
    let pid = c.pid;
    let mut tr = start_tracking(Method::UffdWp, pid);
    let na = c.cmd(OP_MMAP, 16, 0);
    let real = memory::vmas(pid).unwrap();
    let area = |vs: &[memory::Vma]| vs.iter().find(|v| v.start <= na && na < v.end).map(|v| (v.start, v.end)).unwrap();
    let (s, e) = area(&real);
    // As read before the area grew: it ended halfway.
    let stale: Vec<memory::Vma> = real
        .iter()
        .cloned()
        .map(|mut v| {
            if v.start == s {
                v.end = s + (e - s) / 2 / PAGE_SIZE * PAGE_SIZE;
            }
            v
        })
        .collect();
    let mut out = Vec::new();
    tr.collect(&stale, &mut out).expect("collect");
    assert_eq!(area(&memory::vmas(pid).unwrap()), (s, e), "the area was split");
    assert!(within(&out, na, 16).len() >= 8, "the stale part is reported whole");
    // Next round, with the real layout, it is armed whole and tracked.
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, na, 16).len(), 16, "reported whole when armed");
    assert_eq!(area(&memory::vmas(pid).unwrap()), (s, e));
    c.write(na + 5 * PAGE_SIZE, 1);
    let out = collect(&mut tr, pid);
    assert_eq!(within(&out, na, 16), set(&[5]));
    tr.stop();
    assert!(c.alive());
}

#[test]
fn hash_tracks_a_child() {
    scenario(Method::Hash);
}

#[test]
fn soft_dirty_tracks_a_child_where_available() {
    if !Method::SoftDirty.available() {
        eprintln!("soft-dirty not available on this kernel: skipped");
        return;
    }
    scenario(Method::SoftDirty);
}

#[test]
fn best_method_is_real() {
    let m = best_method();
    assert!(m.available());
    eprintln!("best method here: {}", m.name());
}

#[test]
fn stop_right_after_start_leaves_child_unharmed() {
    for m in [Method::UffdWp, Method::Hash] {
        if !m.available() {
            continue;
        }
        let (c, region) = Child::spawn(16);
        let tr = start_tracking(m, c.pid);
        tr.stop();
        for _ in 0..3 {
            c.write(region, 16);
        }
        assert!(c.alive());
        // A clean exit on request.
        let cmd = [OP_EXIT, 0, 0];
        sys::call("write", nr::WRITE, &[c.cmd_w as u64, cmd.as_ptr() as u64, 24]).unwrap();
        let mut st = -1i32;
        sys::call("wait4", nr::WAIT4, &[c.pid as u64, &mut st as *mut i32 as u64, 0x40000000, 0]).unwrap();
        assert_eq!(st, 0, "{}: child exit status", m.name());
    }
}

/// Cost measurements (docs/dirty-tracking.md):
/// `cargo test --release -- --ignored --nocapture bench_dirty`
#[test]
#[ignore]
fn bench_dirty() {
    let gib_pages: u64 = std::env::var("PHAUL_BENCH_PAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(262144);
    for m in [Method::UffdWp, Method::Hash] {
        if !m.available() {
            continue;
        }
        let (c, _) = Child::spawn(1);
        let big = c.cmd(OP_MMAP, gib_pages, 0);
        assert_ne!(big, 0);
        let t = std::time::Instant::now();
        let mut tr = start_tracking(m, c.pid);
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        let vmas = memory::vmas(c.pid).unwrap();
        let mut out = Vec::new();
        let mut time_collect = |tr: &mut Tracker, out: &mut Vec<u64>| {
            let mut best = f64::MAX;
            let t = std::time::Instant::now();
            tr.collect(&vmas, out).unwrap();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
            best
        };
        let clean = time_collect(&mut tr, &mut out);
        let clean2 = time_collect(&mut tr, &mut out);
        // 1% of the pages, spread out: first write per page (faults under uffd-wp)...
        let n = gib_pages / 100;
        let first_ns = c.cmd(OP_WRITE_STRIDE, big, n | (100 << 32));
        // ...and the same pages again in the same round (no fault).
        let again_ns = c.cmd(OP_WRITE_STRIDE, big, n | (100 << 32));
        let dirty1 = time_collect(&mut tr, &mut out);
        let reported = out.iter().filter(|&&a| a >= big && a < big + gib_pages * PAGE_SIZE).count();
        // Everything written.
        let full_ns = c.write(big, gib_pages);
        let full_again_ns = c.write(big, gib_pages);
        let dirty_all = time_collect(&mut tr, &mut out);
        let all_reported = out.len();
        // The frozen round: 1% written again, read without re-arming.
        c.cmd(OP_WRITE_STRIDE, big, n | (100 << 32));
        tr.last_round();
        let dirty_last = time_collect(&mut tr, &mut out);
        println!("{:8} last round (1% dirty, not re-armed): collect {:.2} ms ({} pages)", m.name(), dirty_last, out.len());
        println!(
            "{:8} {} MiB: start {:.1} ms | collect clean {:.2} / {:.2} ms | 1% dirty ({} pages, {} reported) collect {:.2} ms | first write/page {:.2} us, rewrite {:.3} us | full pass {:.1} ms (unprotected {:.1} ms), collect all dirty {:.1} ms ({} pages)",
            m.name(),
            gib_pages * 4 / 1024,
            start_ms,
            clean,
            clean2,
            n,
            reported,
            dirty1,
            first_ns as f64 / n as f64 / 1e3,
            again_ns as f64 / n as f64 / 1e3,
            full_ns as f64 / 1e6,
            full_again_ns as f64 / 1e6,
            dirty_all,
            all_reported
        );
        tr.stop();
    }
}
