//! phaul's native engine: everything that talks to the kernel about another
//! process. One module per kind of kernel object; `ffi` is the only door.

pub mod aio;
pub mod anonfd;
pub mod arch;
pub mod base64;
pub mod check;
pub mod creds;
pub mod dirty;
pub mod dump;
pub mod ffi;
pub mod fifo;
pub mod files;
pub mod fown;
pub mod inflight;
pub mod freeze;
pub mod batch;
pub mod inject;
pub mod json;
pub mod memory;
pub mod migrate;
pub mod ops;
pub mod pageserver;
pub mod proc;
pub mod process;
pub mod procpid;
pub mod ptrace;
pub mod restore;
pub mod seccomp;
pub mod shares;
pub mod session;
pub mod signals;
pub mod sockets;
pub mod stub;
pub mod sys;
pub mod threads;
pub mod tty;
