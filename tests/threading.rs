//! The threading policy: multi-tensor steps equal per-tensor steps, and parallel tasks run under
//! the caller's floating-point environment (FTZ/DAZ), so parallel equals serial bit for bit.

#![cfg(feature = "rayon")]

use rmsprop_simd::{reference, Backend, Hyperparameters, Kernel, State, TensorStep, Threading};
use rmsprop_simd_support::backends::{assert_bitwise, Buffers};
use rmsprop_simd_support::rng::{seeded, uniform_f32};
use rmsprop_simd_support::state::state_for;

fn tensors(lens: &[usize], seed: u64) -> Vec<Buffers<f32>> {
    let mut rng = seeded(seed);
    lens.iter()
        .map(|&n| Buffers {
            params: uniform_f32(&mut rng, n, -1.0, 1.0),
            grads: uniform_f32(&mut rng, n, -1.0, 1.0),
            square_avg: uniform_f32(&mut rng, n, 0.0, 1.0),
            grad_avg: uniform_f32(&mut rng, n, -0.1, 0.1),
            momentum_buffer: uniform_f32(&mut rng, n, -0.1, 0.1),
        })
        .collect()
}

fn step_many(kernel: &Kernel, hps: &[Hyperparameters], bufs: &mut [Buffers<f32>]) {
    let steps = bufs
        .iter_mut()
        .zip(hps.iter().cycle())
        .map(|(b, hp)| TensorStep {
            hyperparameters: hp,
            params: &mut b.params,
            grads: &b.grads,
            state: state_for(
                hp,
                &mut b.square_avg,
                &mut b.grad_avg,
                &mut b.momentum_buffer,
            ),
        })
        .collect();
    kernel.step_many(steps).unwrap();
}

#[test]
fn step_many_equals_one_step_per_tensor() {
    let lens = [0, 1, 63, 64, 65, 1000, 5000, 129, 3, 20000];
    let hps = [
        Hyperparameters::default(),
        Hyperparameters {
            momentum: 0.9,
            centered: true,
            weight_decay: 0.01,
            ..Default::default()
        },
        Hyperparameters {
            lr: 0.1,
            maximize: true,
            momentum: 0.5,
            ..Default::default()
        },
    ];
    for backend in Backend::available() {
        for kernel in [
            Kernel::new()
                .with_backend(backend)
                .with_threading(Threading::Serial),
            Kernel::new()
                .with_backend(backend)
                .with_parallel_min_len(128),
        ] {
            let start = tensors(&lens, 11);
            let mut many = start.clone();
            step_many(&kernel, &hps, &mut many);
            for (i, (b, hp)) in start.iter().zip(hps.iter().cycle()).enumerate() {
                let mut want = b.clone();
                let st = state_for(
                    hp,
                    &mut want.square_avg,
                    &mut want.grad_avg,
                    &mut want.momentum_buffer,
                );
                reference::step(hp, &mut want.params, &want.grads, st).unwrap();
                assert_bitwise(&many[i], &want, &|| {
                    format!("{backend} {kernel:?} tensor {i}")
                });
            }
        }
    }
}

#[test]
fn step_many_refuses_before_writing() {
    let hp = Hyperparameters::default();
    let bad = Hyperparameters { lr: -1.0, ..hp };
    let start = tensors(&[300, 300], 3);
    let mut bufs = start.clone();
    let [a, b] = &mut bufs[..] else {
        unreachable!()
    };
    let err = Kernel::new()
        .step_many(vec![
            TensorStep {
                hyperparameters: &hp,
                params: &mut a.params,
                grads: &a.grads,
                state: State::new(&mut a.square_avg),
            },
            TensorStep {
                hyperparameters: &bad,
                params: &mut b.params,
                grads: &b.grads,
                state: State::new(&mut b.square_avg),
            },
        ])
        .unwrap_err();
    assert_eq!(err.tensor, 1);
    assert_eq!(bufs, start, "nothing written");
}

// ---------------------------------------------------------------- FTZ/DAZ

/// Sets flush-to-zero and denormals-are-zero on this thread (MXCSR / FPCR); returns the
/// previous control value.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn set_flush_denormals(on: bool) -> u64 {
    const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
    let mut csr: u32 = 0;
    // SAFETY: stores MXCSR into a live local.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
    let old = csr;
    let new = if on { csr | FTZ_DAZ } else { csr & !FTZ_DAZ };
    // SAFETY: loads MXCSR from a live local holding a value read from MXCSR with only the
    // FTZ/DAZ bits changed (both valid on every x86-64 CPU with SSE2 and DAZ support).
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack)) };
    old as u64
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
fn set_flush_denormals(on: bool) -> u64 {
    const FZ: u64 = 1 << 24;
    let fpcr: u64;
    // SAFETY: reading FPCR at EL0 has no side effect.
    unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) fpcr) };
    let new = if on { fpcr | FZ } else { fpcr & !FZ };
    // SAFETY: writes FPCR with only the FZ bit changed from its current value.
    unsafe { std::arch::asm!("msr fpcr, {}", in(reg) new) };
    fpcr
}

/// Subnormal-heavy input: every element's result depends on whether subnormals flush.
#[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), not(miri)))]
fn subnormal_buffers(n: usize) -> Buffers<f32> {
    let tiny = f32::MIN_POSITIVE / 4.0; // subnormal
    Buffers {
        params: (0..n).map(|i| tiny * (1 + i % 3) as f32).collect(),
        grads: (0..n).map(|i| tiny * (1 + i % 5) as f32).collect(),
        square_avg: vec![tiny; n],
        grad_avg: vec![0.0; n],
        momentum_buffer: vec![tiny; n],
    }
}

/// With FTZ|DAZ set by the caller, parallel equals serial on every backend (it used to differ
/// on every element: pool threads kept their own environment), and the environment really
/// changes the result (so the comparison can fail).
#[cfg(all(any(target_arch = "x86_64", target_arch = "aarch64"), not(miri)))]
#[test]
fn parallel_steps_run_under_the_callers_ftz_daz() {
    let hp = Hyperparameters {
        lr: 1e-3,
        momentum: 0.9,
        weight_decay: 0.5,
        eps: 0.0,
        ..Default::default()
    };
    let n = 4096;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for backend in Backend::available() {
        let serial = Kernel::new()
            .with_backend(backend)
            .with_threading(Threading::Serial);
        let parallel = Kernel::new()
            .with_backend(backend)
            .with_parallel_min_len(128);
        let run = |kernel: Kernel, flush: bool| {
            let mut b = subnormal_buffers(n);
            // The closure runs on a pool thread: it sets the environment there, and the
            // kernel's tasks on the other pool threads must follow it.
            pool.install(|| {
                let old = set_flush_denormals(flush);
                let st = state_for(
                    &hp,
                    &mut b.square_avg,
                    &mut b.grad_avg,
                    &mut b.momentum_buffer,
                );
                kernel.step(&hp, &mut b.params, &b.grads, st).unwrap();
                restore(old); // exactly what the pool thread had
            });
            b
        };
        let flushed_serial = run(serial, true);
        let flushed_parallel = run(parallel, true);
        assert_bitwise(&flushed_parallel, &flushed_serial, &|| {
            format!("{backend}: FTZ|DAZ, parallel vs serial")
        });
        let normal_serial = run(serial, false);
        let normal_parallel = run(parallel, false);
        assert_bitwise(&normal_parallel, &normal_serial, &|| {
            format!("{backend}: default env")
        });
        let differing = (0..n)
            .filter(|&i| flushed_serial.params[i].to_bits() != normal_serial.params[i].to_bits())
            .count();
        assert!(
            differing > n / 2,
            "{backend}: FTZ/DAZ changed only {differing} of {n} results"
        );
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn restore(value: u64) {
    let csr = value as u32;
    // SAFETY: loads MXCSR from a live local holding a value read from MXCSR earlier.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack)) };
}

#[cfg(all(target_arch = "aarch64", not(miri)))]
fn restore(value: u64) {
    // SAFETY: writes FPCR with a value read from FPCR earlier.
    unsafe { std::arch::asm!("msr fpcr, {}", in(reg) value) };
}
