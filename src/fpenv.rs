//! The calling thread's floating-point environment, carried into parallel tasks.
//!
//! FTZ/DAZ and the rounding mode live in a per-thread register (MXCSR on x86-64, FPCR on
//! aarch64). A caller that sets them (`torch.set_flush_denormal(True)` sets FTZ|DAZ) expects
//! every element of its step computed under them, but rayon's threads keep the environment they
//! were created with. Each parallel task therefore runs under the caller's control bits and
//! restores its thread's own afterwards, so parallel results stay bit-identical to serial ones
//! under any environment.

/// A thread's floating-point control bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FpEnv(u64);

/// MXCSR's sticky exception flags (bits 0-5) are status, not control: a task keeps its own.
#[cfg(all(target_arch = "x86_64", not(miri)))]
const STATUS_BITS: u64 = 0x3f;

impl FpEnv {
    /// The calling thread's environment.
    #[inline]
    pub(crate) fn current() -> FpEnv {
        FpEnv(read())
    }

    /// Runs `f` under this environment's control bits, then restores the thread's own.
    #[inline]
    pub(crate) fn run<R>(self, f: impl FnOnce() -> R) -> R {
        let own = read();
        let wanted = merge(self.0, own);
        if wanted == own {
            return f();
        }
        write(wanted);
        // Restore even if `f` panics (rayon carries the panic to the caller).
        struct Restore(u64);
        impl Drop for Restore {
            fn drop(&mut self) {
                write(self.0);
            }
        }
        let _restore = Restore(own);
        f()
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn merge(control_from: u64, status_from: u64) -> u64 {
    (control_from & !STATUS_BITS) | (status_from & STATUS_BITS)
}

#[cfg(not(all(target_arch = "x86_64", not(miri))))]
fn merge(control_from: u64, _status_from: u64) -> u64 {
    control_from
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn read() -> u64 {
    let mut csr: u32 = 0;
    // SAFETY: `stmxcsr` stores the 32-bit MXCSR to the given address, which is a live, writable,
    // aligned `u32`; it changes no register, flag or other memory. SSE is part of x86-64.
    unsafe {
        core::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
    }
    csr as u64
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn write(value: u64) {
    let csr = value as u32;
    // SAFETY: `ldmxcsr` loads MXCSR from a live, aligned `u32` read from MXCSR earlier (only the
    // status bits are mixed in), so no reserved bit is set and it cannot fault. It changes how
    // later floating-point operations on this thread round and flush, which is its purpose.
    unsafe {
        core::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags));
    }
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
fn read() -> u64 {
    let fpcr: u64;
    // SAFETY: reading FPCR is allowed at EL0 and has no side effect.
    unsafe {
        core::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags));
    }
    fpcr
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
fn write(value: u64) {
    // SAFETY: writing FPCR is allowed at EL0; `value` was read from FPCR (of this or the calling
    // thread), so it holds only bits the CPU accepts. It changes how later floating-point
    // operations on this thread round and flush, which is its purpose.
    unsafe {
        core::arch::asm!("msr fpcr, {}", in(reg) value, options(nomem, nostack, preserves_flags));
    }
}

// Other targets (and miri, which cannot run inline assembly): no environment to carry.
#[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn read() -> u64 {
    0
}

#[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
fn write(_value: u64) {}
