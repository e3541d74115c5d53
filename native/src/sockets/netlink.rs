//! Netlink sockets: protocol, port id, multicast groups and the connected
//! destination, all told by the socket API (getsockname, getpeername,
//! NETLINK_LIST_MEMBERSHIPS); flags and buffer sizes go through opts.rs.
//! Restore binds the same port id, so answers and unicasts addressed to it
//! still arrive, and joins the same groups. Queued messages are not carried
//! over (`lost_datagrams`), and neither is what a subsystem keeps for the
//! old port; the netfilter queue and log bindings, which phaul can see,
//! are refused.

use super::*;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
const NETLINK_NETFILTER: i32 = 12;

fn protocol_name(p: i32) -> String {
    let n = match p {
        0 => "route",
        2 => "usersock",
        4 => "sock_diag",
        6 => "xfrm",
        9 => "audit",
        12 => "netfilter",
        15 => "kobject_uevent",
        16 => "generic",
        _ => return format!("protocol {}", p),
    };
    n.to_string()
}

/// (port id, groups bitmap word 0) of a raw sockaddr_nl.
fn nl_addr(raw: &[u8]) -> (u32, u32) {
    if raw.len() < 12 {
        return (0, 0);
    }
    (u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]), u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]))
}

fn sockaddr_nl(port: u32, groups: u32) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[0..2].copy_from_slice(&(AF_NETLINK as u16).to_le_bytes());
    a[4..8].copy_from_slice(&port.to_le_bytes());
    a[8..12].copy_from_slice(&groups.to_le_bytes());
    a
}

/// Every group the socket is a member of (numbers from 1).
fn memberships(copy: &Fd) -> Result<Vec<Json>> {
    let mut buf = vec![0u8; 64];
    loop {
        let mut len: u32 = buf.len() as u32;
        sys::call(
            "getsockopt(NETLINK_LIST_MEMBERSHIPS)",
            snr::GETSOCKOPT,
            &[copy.raw() as u64, SOL_NETLINK as u64, NETLINK_LIST_MEMBERSHIPS as u64, buf.as_mut_ptr() as u64, &mut len as *mut u32 as u64],
        )?;
        // The kernel says how much it would have written.
        if len as usize > buf.len() {
            buf.resize(len as usize, 0);
            continue;
        }
        buf.truncate(len as usize);
        break;
    }
    Ok(group_numbers(&buf).into_iter().map(Json::from).collect())
}

/// The groups of a membership bitmap (bit n: group n + 1), in order.
fn group_numbers(bitmap: &[u8]) -> Vec<u64> {
    let mut groups = Vec::new();
    for (i, b) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                groups.push((i * 8 + bit + 1) as u64);
            }
        }
    }
    groups
}

/// A netfilter queue or log instance bound to `port` in the socket's
/// network namespace (seen through the owning process).
fn netfilter_binding(ctx: &FileCtx, port: u32) -> Option<String> {
    let pid = crate::anonfd::pid_of_pidfd(ctx.pidfd).ok()?;
    for (file, what) in [("nfnetlink_queue", "queue"), ("nfnetlink_log", "log group")] {
        let text = std::fs::read_to_string(format!("/proc/{}/net/netfilter/{}", pid, file)).unwrap_or_default();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 1 && f[1].parse::<u32>().ok() == Some(port) {
                return Some(format!("netfilter {} {}", what, f[0]));
            }
        }
    }
    None
}

pub fn describe(ctx: &FileCtx, copy: Fd, mut s: Json, ty: i32, proto: i32) -> Result<Json> {
    let (port, _) = nl_addr(&sockname(&copy, false)?);
    let (dst_port, dst_group) = sockname(&copy, true).map(|r| nl_addr(&r)).unwrap_or((0, 0));
    let groups = memberships(&copy)?;
    if proto == NETLINK_NETFILTER && port != 0 {
        if let Some(b) = netfilter_binding(ctx, port) {
            return ctx.unsupported(&format!("netlink socket bound to a {} (port {}, {})", b, port, ctx.target));
        }
    }
    let state = if dst_port != 0 || dst_group != 0 {
        "connected"
    } else if port != 0 {
        "bound"
    } else {
        "unbound"
    };
    let nl = Json::obj().with("portid", port as u64).with("groups", groups).with("dst_portid", dst_port as u64).with("dst_group", dst_group as u64);
    opts::dump_buffers(&copy, AF_NETLINK, ty, proto, &mut s);
    if has_queued(&copy) {
        s.set("lost_datagrams", true);
    }
    s.set("state", state).set("netlink", nl);
    Ok(ctx.base.clone().with("kind", "sock_netlink").with("sock", s))
}

pub fn open(s: &Json) -> Result<Fd> {
    let ty = s.u64_of("type").unwrap_or(SOCK_RAW as u64) as i32;
    let proto = s.u64_of("protocol").unwrap_or(0) as i32;
    let nl = s.get("netlink").ok_or_else(|| Error::new("EIMAGE", "netlink socket without \"netlink\""))?;
    let fd = new_socket(AF_NETLINK, ty, proto)?;
    opts::restore_buffers(&fd, s)?;
    let port = nl.u64_of("portid").unwrap_or(0) as u32;
    let groups: Vec<u32> = nl.arr_of("groups").iter().filter_map(|g| g.as_u64()).map(|g| g as u32).collect();
    let low = groups.iter().filter(|g| (1..=32).contains(*g)).fold(0u32, |m, g| m | 1 << (g - 1));
    // Never bound: left so, the process binds it on first use with its own pid.
    if port != 0 || !groups.is_empty() {
        let a = sockaddr_nl(port, low);
        let what = format!("bind netlink {} socket to port {}", protocol_name(proto), port);
        sys::call(&what, snr::BIND, &[fd.raw() as u64, a.as_ptr() as u64, a.len() as u64])?;
    }
    for g in groups.iter().filter(|g| **g > 32) {
        setsockopt_int(&fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, *g as i32).map_err(|e| e.context(format!("netlink group {}", g)))?;
    }
    let (dst_port, dst_group) = (nl.u64_of("dst_portid").unwrap_or(0) as u32, nl.u64_of("dst_group").unwrap_or(0) as u32);
    if dst_port != 0 || dst_group != 0 {
        // getpeername gave the group as a bit, as connect() takes it.
        let a = sockaddr_nl(dst_port, dst_group);
        sys::call("connect netlink socket", snr::CONNECT, &[fd.raw() as u64, a.as_ptr() as u64, a.len() as u64])?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_bitmap() {
        // NETLINK_LIST_MEMBERSHIPS of a route socket in groups 1, 5 and 33
        assert_eq!(group_numbers(&[0x11, 0, 0, 0, 0x01, 0, 0, 0]), vec![1, 5, 33]);
        assert_eq!(group_numbers(&[]), Vec::<u64>::new());
    }
}
