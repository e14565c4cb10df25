//! The timing harness of the performance examples: interleaved rounds, best batch.

use std::time::{Duration, Instant};

/// Seconds per call of each of `fs` on `data`: the best of `rounds` rounds, where a round times
/// one batch of each function in turn (each batch preceded, untimed, by `reset`). Interleaving
/// puts a kernel and the probe it is compared with under the same conditions on a shared
/// machine; the best batch is the one least disturbed by the other tenants. Resetting matters:
/// thousands of steps on the same gradients drive some values into the subnormal range, which is
/// 2x slower on x86 and not what a training step sees. Batches are sized to about 5 ms (at most
/// 256 calls).
pub fn seconds_per_call_each<D, const N: usize>(
    rounds: usize,
    data: &mut D,
    reset: impl Fn(&mut D),
    fs: [&dyn Fn(&mut D); N],
) -> [f64; N] {
    let reps = fs.map(|f| {
        reset(data);
        f(data); // warm up: page faults, caches, thread pool
        let mut reps = 1usize;
        loop {
            reset(data);
            let t = Instant::now();
            for _ in 0..reps {
                f(data);
            }
            if t.elapsed() >= Duration::from_millis(5) || reps >= 256 {
                return reps;
            }
            reps *= 2;
        }
    });
    let mut best = [f64::INFINITY; N];
    for _ in 0..rounds {
        for i in 0..N {
            reset(data);
            let t = Instant::now();
            for _ in 0..reps[i] {
                fs[i](data);
            }
            best[i] = best[i].min(t.elapsed().as_secs_f64() / reps[i] as f64);
        }
    }
    best
}
