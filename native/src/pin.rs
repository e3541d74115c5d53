//! One CPU for the frozen window. On a paravirtualised guest like the test
//! machine, waking a traced thread on another CPU costs far more than the
//! system call it is woken for: an injected call took 0.2 ms, and the first
//! into a thread that had slept 1.4-3.5 ms, while the other CPU was busy
//! (the page sender, the destination's engine, a garbage collector); on the
//! tracer's own CPU, which the tracer leaves when it waits, 26 us. So for
//! the frozen window the engine's thread and every thread it injects into
//! share the CPU the engine runs on, and each gets its own mask back after.
//! The masks taken are kept here (one engine per process): a dump of a
//! pinned thread reads its mask from here.

use crate::sys::{self, nr, Pid};
use std::collections::HashMap;
use std::sync::Mutex;

const MASK_BYTES: usize = 128;

/// Each pinned thread's own mask.
static SAVED: Mutex<Option<HashMap<Pid, Vec<u8>>>> = Mutex::new(None);

fn get_mask(tid: Pid) -> Option<Vec<u8>> {
    let mut m = vec![0u8; MASK_BYTES];
    let n = unsafe { sys::raw(nr::SCHED_GETAFFINITY, &[tid as u64, MASK_BYTES as u64, m.as_mut_ptr() as u64]) }.ok()?;
    m.truncate(n as usize);
    Some(m)
}

fn set_mask(tid: Pid, m: &[u8]) -> bool {
    unsafe { sys::raw(nr::SCHED_SETAFFINITY, &[tid as u64, m.len() as u64, m.as_ptr() as u64]) }.is_ok()
}

/// The CPU the calling thread runs on.
pub fn here() -> Option<usize> {
    let mut cpu: u32 = 0;
    unsafe { sys::raw(nr::GETCPU, &[&mut cpu as *mut u32 as u64, 0, 0]) }.ok()?;
    Some(cpu as usize).filter(|&c| c < MASK_BYTES * 8)
}

/// Pin `tids` to `cpu`. Threads a pinned thread starts inherit its pin:
/// start helper threads before pinning their parent.
pub fn pin_to(cpu: usize, tids: impl IntoIterator<Item = Pid>) {
    let mut one = vec![0u8; MASK_BYTES];
    one[cpu / 8] = 1 << (cpu % 8);
    let Ok(mut saved) = SAVED.lock() else { return };
    let saved = saved.get_or_insert_with(HashMap::new);
    for tid in tids {
        if saved.contains_key(&tid) {
            continue;
        }
        if let Some(m) = get_mask(tid) {
            if set_mask(tid, &one) {
                saved.insert(tid, m);
            }
        }
    }
}

/// Pin the calling thread and `tids` to the CPU the caller runs on.
pub fn pin(tids: impl IntoIterator<Item = Pid>) {
    if let Some(cpu) = here() {
        pin_to(cpu, std::iter::once(sys::gettid()).chain(tids));
    }
}

/// Keep the calling thread off `cpu`, unless that leaves it nowhere.
pub fn avoid_self(cpu: usize) {
    let me = sys::gettid();
    let Some(mut m) = get_mask(me) else { return };
    if let Some(b) = m.get_mut(cpu / 8) {
        *b &= !(1 << (cpu % 8));
    }
    if m.iter().any(|&b| b != 0) {
        set_mask(me, &m);
    }
}

/// The CPUs `tid` may run on: its own mask when pinned here, else the
/// kernel's (None: it cannot be read).
pub fn mask_of(tid: Pid) -> Option<Vec<u8>> {
    own_mask(tid).or_else(|| get_mask(tid))
}

/// The mask `tid` had before it was pinned (None: not pinned).
fn own_mask(tid: Pid) -> Option<Vec<u8>> {
    SAVED.lock().ok()?.as_ref()?.get(&tid).cloned()
}

/// Give `tid` back its own mask, or, for a thread made by a pinned one
/// (a restored process's threads, cloned by its leader), the mask of
/// `like`. Forgets `tid`.
pub fn unpin_like(tid: Pid, like: Pid) {
    let Ok(mut saved) = SAVED.lock() else { return };
    let Some(saved) = saved.as_mut() else { return };
    if let Some(m) = saved.get(&tid).or_else(|| saved.get(&like)).cloned() {
        set_mask(tid, &m);
    }
    saved.remove(&tid);
}

/// Every pinned thread gets its own mask back (those that ended are skipped).
pub fn unpin_all() {
    let Ok(mut saved) = SAVED.lock() else { return };
    if let Some(saved) = saved.take() {
        for (tid, m) in saved {
            set_mask(tid, &m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_and_unpin_the_calling_thread() {
        let me = sys::gettid();
        let before = get_mask(me).unwrap_or_default();
        pin([]);
        let during = get_mask(me).unwrap_or_default();
        assert_eq!(during.iter().map(|b| b.count_ones()).sum::<u32>(), 1, "pinned to one CPU");
        assert_eq!(own_mask(me), Some(before.clone()));
        assert_eq!(mask_of(me), Some(before.clone()));
        unpin_all();
        assert_eq!(get_mask(me).unwrap_or_default(), before);
        assert_eq!(own_mask(me), None);
    }
}
