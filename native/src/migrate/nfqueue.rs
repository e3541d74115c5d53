//! Holding a frozen tree's incoming packets in the kernel instead of
//! dropping them, when the destination shares the source's network stack
//! (one host, one network namespace). The handoff table's rules then send
//! what they match to an nfnetlink queue bound here; once the destination's
//! sockets exist (or the source has its own back, on rollback) every held
//! packet is accepted and goes on through the stack to whichever socket now
//! has its addresses. A dropped segment costs the peer a retransmission
//! timeout (200 ms at least) and a dropped SYN a retry after 1 s; a held
//! one arrives as soon as the handoff ends.
//!
//! nf_tables can queue only with nft_queue, which kernels may lack
//! (CONFIG_NFT_QUEUE is off on our test machine) while the x_tables NFQUEUE
//! target is there: so the handoff table marks what it holds (a bit, and
//! the queue number in the low 16 bits) and one iptables rule per address
//! family, in the raw table right after it, queues marked packets. Without
//! iptables (or when anything here fails) the table drops them, as before.
//!
//! Wire format (include/uapi/linux/netfilter/nfnetlink_queue.h): config
//! and verdict messages are nfnetlink messages of subsystem NFNL_SUBSYS_QUEUE
//! whose resource id is the queue number. Packets are announced with their
//! metadata only (NFQNL_COPY_META); one batch verdict accepts every packet
//! up to the highest id read.

use super::nftnl::{answer, attr, await_acks, message, messages, NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST};
use crate::sockets::{MSG_DONTWAIT, SOL_SOCKET, SO_RCVBUFFORCE};
use crate::sys::{self, Error, Fd, Pid, Result};

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
const RECVFROM: i64 = 45;
/// Packets the kernel keeps for us; beyond that it drops them (no
/// fail-open: accepting a packet while no socket has its addresses would
/// draw a reset).
const MAX_HELD: u32 = 16384;

/// The mark bit of held packets (the low 16 bits carry the queue number).
const HELD_MARK: u32 = 0x4000_0000;

pub struct Queue {
    nl: Fd,
    pub num: u16,
    pub accepted: u64,
    /// (network namespace pid, iptables programs whose rule is in place)
    rules: (Pid, Vec<String>),
}

fn xt_rule(num: u16) -> Vec<String> {
    let m = format!("{:#x}/{:#x}", HELD_MARK | num as u32, HELD_MARK | 0xffff);
    ["-t", "raw", "PREROUTING", "-m", "mark", "--mark", &m, "-j", "NFQUEUE", "--queue-num", &num.to_string()].iter().map(|s| s.to_string()).collect()
}

/// Add (`-I`) or delete (`-D`) the NFQUEUE rule of queue `num` with iptables program `prog`.
fn xt(netns_pid: Pid, prog: &str, op: &str, num: u16) -> Result<()> {
    let path = super::handoff::tool_path(prog).ok_or_else(|| Error::new("ENOENT", format!("{} is not installed (Debian package iptables)", prog)))?;
    let r = xt_rule(num);
    // -w: wait for the xtables lock rather than fail beside another user
    let mut args: Vec<&str> = vec!["-w", r[0].as_str(), r[1].as_str(), op];
    args.extend(r[2..].iter().map(String::as_str));
    super::handoff::run_in_netns(netns_pid, &path, &args, "")
}

fn config(num: u16, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0 /* AF_UNSPEC */, num, attrs);
    out
}

fn bind_message(num: u16) -> Vec<u8> {
    let mut a = Vec::new();
    attr(&mut a, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
    config(num, 1, &a)
}

fn params_message(num: u16) -> Vec<u8> {
    let mut a = Vec::new();
    let mut p = 0u32.to_be_bytes().to_vec();
    p.push(NFQNL_COPY_META);
    attr(&mut a, NFQA_CFG_PARAMS, &p);
    attr(&mut a, NFQA_CFG_QUEUE_MAXLEN, &MAX_HELD.to_be_bytes());
    config(num, 2, &a)
}

fn verdict_batch(num: u16, upto: u32) -> Vec<u8> {
    let mut a = Vec::new();
    let mut v = NF_ACCEPT.to_be_bytes().to_vec();
    v.extend_from_slice(&upto.to_be_bytes());
    attr(&mut a, NFQA_VERDICT_HDR, &v);
    let mut out = Vec::new();
    message(&mut out, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST | NLM_F_ACK, VERDICT_SEQ, 0, num, &a);
    out
}

/// Sequence number of our verdict messages.
const VERDICT_SEQ: u32 = 3;

/// One read of the queue socket: the ids of the packets it announces go to
/// `ids`; the answer to request `seq`, if there, is returned (0: done,
/// else an errno).
fn scan(buf: &[u8], ids: &mut Vec<u32>, seq: u32) -> Option<i32> {
    let mut got = None;
    // A malformed message ends the read; what came before it counts.
    for (ty, m) in messages(buf).map_while(|m| m.ok()) {
        match answer(ty, m) {
            Some((s, e)) if s == seq => got = Some(e),
            _ => {}
        }
        if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            // attributes follow the nlmsghdr (16) and the nfgenmsg (4)
            let mut a = 20;
            while a + 4 <= m.len() {
                let alen = u16::from_le_bytes([m[a], m[a + 1]]) as usize;
                let aty = u16::from_le_bytes([m[a + 2], m[a + 3]]) & 0x3fff;
                if alen < 4 || a + alen > m.len() {
                    break;
                }
                if aty == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes([m[a + 4], m[a + 5], m[a + 6], m[a + 7]]));
                }
                a += (alen + 3) & !3;
            }
        }
    }
    got
}

impl Queue {
    /// Bind a free queue number in the network namespace of socket `beside`
    /// (that of process `netns_pid`), and queue the packets marked for it.
    pub fn bind(beside: &Fd, netns_pid: Pid) -> Result<Queue> {
        let mut q = Self::bind_number(beside)?;
        q.rules.0 = netns_pid;
        // On failure, dropping `q` deletes the rule already added.
        for prog in ["iptables-legacy", "ip6tables-legacy"] {
            xt(netns_pid, prog, "-I", q.num)?;
            q.rules.1.push(prog.into());
        }
        Ok(q)
    }

    fn bind_number(beside: &Fd) -> Result<Queue> {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) ^ std::process::id();
        let mut last = Error::new("EBUSY", "no free netfilter queue number");
        for i in 0..16u32 {
            let num = 20000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 40000) as u16;
            let nl = crate::sockets::netlink_socket_beside(beside, NETLINK_NETFILTER)?;
            // Room for many announcements: a full socket makes the kernel drop the packet.
            let _ = crate::sockets::setsockopt_int(&nl, SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20);
            crate::sockets::send_to_kernel(&nl, &bind_message(num), "netfilter queue bind")?;
            match await_acks(&nl, &mut vec![1], "binding a netfilter queue") {
                Ok(()) => {}
                // taken by another program (EBUSY) or another of our migrations
                Err(e) => {
                    last = e;
                    continue;
                }
            }
            crate::sockets::send_to_kernel(&nl, &params_message(num), "netfilter queue parameters")?;
            await_acks(&nl, &mut vec![2], "setting up a netfilter queue")?;
            return Ok(Queue { nl, num, accepted: 0, rules: (0, Vec::new()) });
        }
        Err(last)
    }

    /// The nft statement that sends a packet here (through the iptables rules).
    pub fn statement(&self) -> String {
        format!("meta mark set meta mark & {:#x} | {:#x}", !(HELD_MARK | 0xffff), HELD_MARK | self.num as u32)
    }

    /// Accept every packet held so far: they go on through the stack.
    pub fn accept_all(&mut self) -> Result<u64> {
        let mut buf = vec![0u8; 65536];
        let mut ids = Vec::new();
        let mut n = 0u64;
        loop {
            loop {
                match unsafe { sys::raw(RECVFROM, &[self.nl.raw() as u64, buf.as_mut_ptr() as u64, buf.len() as u64, MSG_DONTWAIT, 0, 0]) } {
                    Ok(len) => {
                        scan(&buf[..len as usize], &mut ids, VERDICT_SEQ);
                    }
                    Err(11) => break, // EAGAIN: nothing more announced
                    // ENOBUFS: announcements were lost, not the packets; their
                    // ids are below later ones, which the batch covers.
                    Err(105) => continue,
                    Err(e) => return Err(Error::sys("reading the netfilter queue", e)),
                }
            }
            let top = match ids.iter().max() {
                Some(&t) => t,
                None => break,
            };
            n += ids.len() as u64;
            ids.clear();
            crate::sockets::send_to_kernel(&self.nl, &verdict_batch(self.num, top), "netfilter queue verdict")?;
            // Packets announced while waiting for the answer go in the next batch.
            loop {
                let len = sys::call("netfilter queue answer", RECVFROM, &[self.nl.raw() as u64, buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0])? as usize;
                match scan(&buf[..len], &mut ids, VERDICT_SEQ) {
                    Some(0) => break,
                    Some(e) => return Err(Error::sys("accepting held packets", e)),
                    None => {}
                }
            }
        }
        self.accepted += n;
        Ok(n)
    }
}

impl Drop for Queue {
    /// The rules go first: a packet marked after the queue closed would
    /// otherwise wait for a listener that is gone (it is dropped).
    fn drop(&mut self) {
        for prog in std::mem::take(&mut self.rules.1) {
            if let Err(e) = xt(self.rules.0, &prog, "-D", self.num) {
                eprintln!("phaul: cannot delete the NFQUEUE rule of queue {}: {}", self.num, e.message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::nftnl::NLMSG_ERROR;
    use super::*;

    #[test]
    fn reads_ids_of_announced_packets() {
        // one NFQNL_MSG_PACKET message with a packet header attribute (id 7)
        let mut a = Vec::new();
        attr(&mut a, NFQA_PACKET_HDR, &[0, 0, 0, 7, 0x08, 0x00, 0]);
        let mut m = Vec::new();
        message(&mut m, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET, 0, 0, 2, 1234, &a);
        let mut two = m.clone();
        two.extend_from_slice(&m);
        let mut ids = Vec::new();
        assert_eq!(scan(&two, &mut ids, VERDICT_SEQ), None);
        assert_eq!(ids, vec![7, 7]);
        // an announcement and the answer to our verdict in one read
        let mut ack = Vec::new();
        let mut err = 0i32.to_le_bytes().to_vec();
        err.extend_from_slice(&verdict_batch(1, 1)[..16]);
        ack.extend_from_slice(&((16 + err.len()) as u32).to_le_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_le_bytes());
        ack.extend_from_slice(&[0; 10]);
        ack.extend_from_slice(&err);
        let mut both = m.clone();
        both.extend_from_slice(&ack);
        ids.clear();
        assert_eq!(scan(&both, &mut ids, VERDICT_SEQ), Some(0));
        assert_eq!(ids, vec![7]);
    }

    #[test]
    fn verdict_accepts_up_to_an_id() {
        let v = verdict_batch(300, 9);
        assert_eq!(u16::from_le_bytes([v[4], v[5]]), (3 << 8) | 3);
        assert_eq!(u16::from_be_bytes([v[18], v[19]]), 300);
        assert_eq!(&v[24..32], &[0, 0, 0, 1, 0, 0, 0, 9]);
    }
}
