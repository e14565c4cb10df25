//! Trains a softmax-regression classifier on generated data with hand-written gradients, stepping
//! its parameters with `rmsprop_simd`, then measures the step's throughput.
//!
//! ```text
//! cargo run --release -p rmsprop-simd-quickstart
//! ```

use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use rmsprop_simd::{Backend, Hyperparameters, Kernel, State, Threading};
use std::time::Instant;

const FEATURES: usize = 64;
const CLASSES: usize = 8;
const SAMPLES: usize = 4096;

/// A seeded generator (reproducible data), uniform in [-1, 1).
struct Rng(XorShiftRng);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0.random_range(-1.0..1.0)
    }
}

/// Logits `W x + b` for one sample; `params` holds `W` (CLASSES x FEATURES, row-major) then `b`.
fn logits(params: &[f32], x: &[f32]) -> [f32; CLASSES] {
    let mut out = [0.0; CLASSES];
    for (k, o) in out.iter_mut().enumerate() {
        let row = &params[k * FEATURES..(k + 1) * FEATURES];
        *o = row.iter().zip(x).map(|(w, x)| w * x).sum::<f32>() + params[CLASSES * FEATURES + k];
    }
    out
}

/// Mean cross-entropy loss and its gradient with respect to `params`, by hand.
fn loss_and_grad(params: &[f32], xs: &[f32], labels: &[usize], grad: &mut [f32]) -> f32 {
    grad.fill(0.0);
    let mut loss = 0.0f64;
    for (x, &label) in xs.chunks_exact(FEATURES).zip(labels) {
        let z = logits(params, x);
        let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        loss += (sum.ln() - (z[label] - max)) as f64;
        for k in 0..CLASSES {
            // d loss / d z_k = softmax_k - [k == label]
            let dz = exp[k] / sum - if k == label { 1.0 } else { 0.0 };
            let dz = dz / SAMPLES as f32;
            for (g, xi) in grad[k * FEATURES..(k + 1) * FEATURES].iter_mut().zip(x) {
                *g += dz * xi;
            }
            grad[CLASSES * FEATURES + k] += dz;
        }
    }
    (loss / SAMPLES as f64) as f32
}

fn accuracy(params: &[f32], xs: &[f32], labels: &[usize]) -> f32 {
    let correct = xs
        .chunks_exact(FEATURES)
        .zip(labels)
        .filter(|(x, &label)| {
            let z = logits(params, x);
            (0..CLASSES).max_by(|&a, &b| z[a].total_cmp(&z[b])) == Some(label)
        })
        .count();
    correct as f32 / labels.len() as f32
}

fn main() -> Result<(), rmsprop_simd::Error> {
    let kernel = Kernel::new();
    println!(
        "backend: {} (available: {})",
        kernel.backend(),
        Backend::available()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Data: labels from a hidden linear model plus noise.
    let mut rng = Rng(XorShiftRng::seed_from_u64(0x1234_5678_9ABC_DEF1));
    let truth: Vec<f32> = (0..CLASSES * FEATURES + CLASSES)
        .map(|_| 2.0 * rng.uniform())
        .collect();
    let xs: Vec<f32> = (0..SAMPLES * FEATURES).map(|_| rng.uniform()).collect();
    let labels: Vec<usize> = xs
        .chunks_exact(FEATURES)
        .map(|x| {
            let z = logits(&truth, x);
            let noisy: Vec<f32> = z.iter().map(|v| v + 0.5 * rng.uniform()).collect();
            (0..CLASSES)
                .max_by(|&a, &b| noisy[a].total_cmp(&noisy[b]))
                .unwrap()
        })
        .collect();

    // Model and optimizer state (PyTorch's names), all zeros at the start.
    let n = CLASSES * FEATURES + CLASSES;
    let mut params = vec![0.0f32; n];
    let mut grads = vec![0.0f32; n];
    let mut square_avg = vec![0.0f32; n];
    let mut momentum_buffer = vec![0.0f32; n];
    let mut hp = Hyperparameters {
        lr: 1e-2,
        momentum: 0.5,
        ..Default::default()
    };

    let epochs = 150;
    for epoch in 0..=epochs {
        let loss = loss_and_grad(&params, &xs, &labels, &mut grads);
        if epoch % 15 == 0 {
            println!(
                "epoch {epoch:>3}  lr {:.5}  loss {loss:.4}  accuracy {:.1}%",
                hp.lr,
                100.0 * accuracy(&params, &xs, &labels)
            );
        }
        // cosine learning-rate schedule: hp.lr may change on every step
        hp.lr = 1e-2 * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos());
        let state = State::new(&mut square_avg).with_momentum_buffer(&mut momentum_buffer);
        kernel.step(&hp, &mut params, &grads, state)?;
    }

    // Step throughput: the optimizer step alone, on buffers of several sizes.
    println!("\nstep throughput (plain RMSprop, f32, default backend):");
    for len in [10_000usize, 1_000_000, 10_000_000] {
        let mut p = vec![0.5f32; len];
        let g: Vec<f32> = (0..len).map(|i| (i % 97) as f32 * 1e-3 - 0.05).collect();
        let mut v = vec![0.0f32; len];
        let hp = Hyperparameters::default();
        for (name, threading) in [
            ("1 thread", Threading::Serial),
            ("parallel", Threading::Parallel),
        ] {
            let k = kernel.with_threading(threading);
            k.step(&hp, &mut p, &g, State::new(&mut v))?; // warm up (page faults, caches)
            let reps = (200_000_000 / len).clamp(3, 20_000);
            let start = Instant::now();
            for _ in 0..reps {
                k.step(&hp, &mut p, &g, State::new(&mut v))?;
            }
            let secs = start.elapsed().as_secs_f64();
            let rate = (len * reps) as f64 / secs;
            println!("  {len:>10} elements, {name:<8}: {:>6.2} Gelem/s ({:>5.1} GB/s of 20 B/elem traffic)",
                rate / 1e9, rate * 20.0 / 1e9);
        }
    }
    Ok(())
}
