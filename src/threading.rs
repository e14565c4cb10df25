//! The threading policy, in one place: when a step leaves the calling thread, how its work is
//! cut into tasks, and where the tasks run.
//!
//! - A step whose total length (one buffer, or every tensor of a multi-tensor step) is below the
//!   kernel's threshold ([`PARALLEL_MIN_LEN`] by default), a [`Threading::Serial`] kernel, and a
//!   rayon pool of one thread all run on the calling thread, with no allocation.
//! - Otherwise the work is cut into tasks of about `max(total / (16 * threads), threshold / 2)`
//!   elements: large buffers are cut at multiples of [`CHUNK_ALIGN`] elements from their start,
//!   small ones are batched into one task, and the tasks run on the caller's *current* rayon pool
//!   (`ThreadPool::install` chooses it), several per thread so that work stealing evens out
//!   threads slowed by other tenants.
//!
//! Every element gets the same arithmetic wherever it runs, and every task runs under the
//! caller's floating-point environment (FTZ/DAZ, rounding: see `fpenv.rs`), so the result is
//! bit-identical to [`Threading::Serial`] for any thread count, threshold and environment.

use crate::kernel::Piece;
use crate::{Coefficients, Element, Kernel};

/// Where a step's work runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Threading {
    /// On the calling thread only.
    Serial,
    /// With the `rayon` feature: steps of at least [`Kernel::parallel_min_len`] elements
    /// ([`PARALLEL_MIN_LEN`] by default) are cut into tasks (at multiples of [`CHUNK_ALIGN`]
    /// elements) run on the caller's *current* rayon pool, so `ThreadPool::install` decides the
    /// threads; shorter steps stay on the calling thread. Without the `rayon` feature this is the
    /// same as `Serial`. Results are bit-identical to `Serial` for any thread count.
    #[default]
    Parallel,
}

/// Steps shorter than this (in elements, summed over every tensor of a multi-tensor step) run
/// on the calling thread under [`Threading::Parallel`]; longer ones are cut into tasks of at least
/// half of it. Below it, handing work to rayon's sleeping threads (tens of microseconds on a busy
/// VM) can cost more than the second core saves. Measured on the 2-core development VM
/// (`cargo run --release --example roofline -- --threshold`, f32 plain, serial vs the same buffer
/// split into two tasks, three runs): 0.61-1.40x at 98304 elements, 0.90-1.51x at 131072,
/// 1.27-1.69x at 196608, 1.11-1.64x at 262144; hence 196608 (the old 262144 left 1.3-1.7x on the
/// table between the two).
pub const PARALLEL_MIN_LEN: usize = 3 << 16;

/// Parallel tasks start at multiples of this many elements from the start of each buffer: a
/// whole number of vectors for every backend and of 64-byte cache lines for both element types.
pub const CHUNK_ALIGN: usize = 64;

/// Runs `f` on `pool` (as [`rayon::ThreadPool::install`]) under the *calling* thread's
/// floating-point environment (FTZ/DAZ, rounding mode), restoring the pool thread's own
/// afterwards. `pool.install(|| kernel.step(..))` alone would run the step under the pool
/// thread's environment; with this, a step gives the same bits whichever pool runs it.
///
/// ```
/// use rmsprop_simd::{run_in_pool, step, Hyperparameters, State};
/// let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let (mut p, g, mut v) = (vec![1.0f32; 1000], vec![0.5f32; 1000], vec![0.0f32; 1000]);
/// run_in_pool(&pool, || step(&Hyperparameters::default(), &mut p, &g, State::new(&mut v)))?;
/// # Ok::<(), rmsprop_simd::Error>(())
/// ```
#[cfg(feature = "rayon")]
pub fn run_in_pool<R: Send>(pool: &rayon::ThreadPool, f: impl FnOnce() -> R + Send) -> R {
    let env = crate::fpenv::FpEnv::current();
    pool.install(|| env.run(f))
}

/// Tasks per thread: enough for work stealing to even out a thread slowed by another tenant.
#[cfg(feature = "rayon")]
const TASKS_PER_THREAD: usize = 16;

/// Runs one buffer (group 0 of `coeffs`) with `kernel`'s backend and threading.
pub(crate) fn run_one<T: Element, D: Piece<T>>(kernel: &Kernel, k: Coefficients<T>, bufs: D) {
    #[cfg(feature = "rayon")]
    if splits(kernel, bufs.len()) {
        let total = bufs.len();
        return run_tasks(kernel, &[k], vec![(0, bufs)], total);
    }
    bufs.run(kernel.backend(), k);
}

/// Runs every `(group, buffers)` piece with the coefficients of its group.
#[cfg(feature = "std")]
pub(crate) fn run_many<T: Element, D: Piece<T>>(
    kernel: &Kernel,
    coeffs: &[Coefficients<T>],
    pieces: Vec<(usize, D)>,
) {
    #[cfg(feature = "rayon")]
    {
        let total = pieces.iter().map(|(_, b)| b.len()).sum();
        if splits(kernel, total) {
            return run_tasks(kernel, coeffs, pieces, total);
        }
    }
    for (group, bufs) in pieces {
        bufs.run(kernel.backend(), coeffs[group]);
    }
}

/// Does a step of `total` elements leave the calling thread?
#[cfg(feature = "rayon")]
pub(crate) fn splits(kernel: &Kernel, total: usize) -> bool {
    kernel.threading() == Threading::Parallel
        && total >= kernel.parallel_min_len()
        && rayon::current_num_threads() > 1
}

/// The length of one task for a step of `total` elements on `threads` threads.
#[cfg(feature = "rayon")]
fn task_len(total: usize, threads: usize, min_len: usize) -> usize {
    (total / (threads * TASKS_PER_THREAD))
        .max(min_len / 2)
        .next_multiple_of(CHUNK_ALIGN)
}

/// Cuts the pieces (`total` elements in all) into tasks of about [`task_len`] elements and runs
/// them on the current pool.
#[cfg(feature = "rayon")]
fn run_tasks<T: Element, D: Piece<T>>(
    kernel: &Kernel,
    coeffs: &[Coefficients<T>],
    pieces: Vec<(usize, D)>,
    total: usize,
) {
    use rayon::prelude::*;
    let chunk = task_len(
        total,
        rayon::current_num_threads(),
        kernel.parallel_min_len(),
    );
    let mut tasks: Vec<Vec<(usize, D)>> = Vec::new();
    let mut current = Vec::new();
    let mut current_len = 0;
    for (group, mut bufs) in pieces {
        loop {
            let room = chunk - current_len;
            if bufs.len() <= room {
                current_len += bufs.len();
                current.push((group, bufs));
                break;
            }
            let cut = room / CHUNK_ALIGN * CHUNK_ALIGN;
            if cut > 0 {
                let (head, tail) = bufs.split_at(cut);
                current.push((group, head));
                bufs = tail;
            }
            tasks.push(core::mem::take(&mut current));
            current_len = 0;
        }
    }
    if !current.is_empty() {
        tasks.push(current);
    }
    let backend = kernel.backend();
    // Every task runs under the caller's FTZ/DAZ and rounding mode, as a serial step would.
    let env = crate::fpenv::FpEnv::current();
    tasks.into_par_iter().for_each(|task| {
        env.run(|| {
            for (group, bufs) in task {
                bufs.run(backend, coeffs[group]);
            }
        })
    });
}

#[cfg(all(test, feature = "rayon"))]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_aligned_and_bounded() {
        for (total, threads) in [
            (1 << 17, 2),
            (10_000_000, 2),
            (12_345_678, 7),
            (1 << 20, 64),
        ] {
            let len = task_len(total, threads, PARALLEL_MIN_LEN);
            assert_eq!(len % CHUNK_ALIGN, 0);
            assert!(len >= PARALLEL_MIN_LEN / 2);
            assert!(total.div_ceil(len) <= threads * TASKS_PER_THREAD + 1);
        }
    }
}
