//! Per-architecture pieces: register layout, syscall calling convention,
//! syscall-restart rewinding and the extended (FPU/vector) state regset.
//! Only x86_64 is implemented and tested; aarch64 goes in its own module.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("phaul's native engine supports x86_64 only for now (aarch64: add arch/aarch64.rs)");
