//! Live migration: the source streams pages while the process runs, the
//! destination builds the process's address space as they arrive.

pub mod dest;
pub mod handoff;
pub mod nfqueue;
pub mod nftnl;
pub mod send;
pub mod source;
pub mod stream;
