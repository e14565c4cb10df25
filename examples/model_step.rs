//! One optimizer step over a whole model (the ResNet-50 and GPT-2 small shape lists of
//! `benches/models/`) through `RmsProp`, against one contiguous buffer of the same total size,
//! measured alternately (tensors, contiguous, tensors, ...) so that the noise of a shared machine
//! hits both alike; prints the best of each and their ratio.
//!
//! ```text
//! cargo run --release --example model_step
//! ```

use rmsprop_simd::{Hyperparameters, Kernel, RmsProp, State, Threading};
use std::time::Instant;

#[path = "../benches/support/workloads.rs"]
mod workloads;
use workloads::{fill, shapes};

/// Element count of each tensor of a shape list.
fn lens(list: &str) -> Vec<usize> {
    shapes(list).iter().map(|s| s.iter().product()).collect()
}

fn main() {
    let d = Hyperparameters::default();
    let rounds = 7;
    println!(
        "model      variant            threads | tensors Gelem/s | contiguous Gelem/s | ratio"
    );
    for (model, list) in [
        ("resnet50", include_str!("../benches/models/resnet50.txt")),
        (
            "gpt2-small",
            include_str!("../benches/models/gpt2-small.txt"),
        ),
    ] {
        let lens = lens(list);
        let total: usize = lens.iter().sum();
        for (variant, hp) in [
            ("plain", d),
            (
                "momentum+centered",
                Hyperparameters {
                    momentum: 0.9,
                    centered: true,
                    ..d
                },
            ),
        ] {
            for (threads, threading) in [("1", Threading::Serial), ("all", Threading::Parallel)] {
                let kernel = Kernel::new().with_threading(threading);
                let mut params: Vec<Vec<f32>> =
                    lens.iter().enumerate().map(|(i, &n)| fill(n, i)).collect();
                let grads: Vec<Vec<f32>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| fill(n, i + 500))
                    .collect();
                let shapes = lens.iter().map(|&n| vec![n]).collect();
                let mut opt = RmsProp::<f32>::new(shapes, hp).unwrap().with_kernel(kernel);
                let mut p = fill(total, 1);
                let g = fill(total, 2);
                let (mut v, mut ga, mut mb) = (
                    vec![0.0f32; total],
                    vec![0.0f32; total],
                    vec![0.0f32; total],
                );
                let (mut best_tensors, mut best_contiguous) = (f64::INFINITY, f64::INFINITY);
                for round in 0..=rounds {
                    let t = Instant::now();
                    let mut pr: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
                    let gr: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(&g[..])).collect();
                    opt.step(&mut pr, &gr).unwrap();
                    let tensors = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let mut state = State::new(&mut v[..]);
                    if hp.centered {
                        state = state.with_grad_avg(&mut ga[..]);
                    }
                    if hp.momentum > 0.0 {
                        state = state.with_momentum_buffer(&mut mb[..]);
                    }
                    kernel.step(&hp, &mut p, &g, state).unwrap();
                    let contiguous = t.elapsed().as_secs_f64();
                    if round > 0 {
                        // round 0 warms up: first touch of the lazily allocated state
                        best_tensors = best_tensors.min(tensors);
                        best_contiguous = best_contiguous.min(contiguous);
                    }
                }
                let (a, b) = (
                    total as f64 / best_tensors / 1e9,
                    total as f64 / best_contiguous / 1e9,
                );
                println!(
                    "{model:<10} {variant:<18} {threads:>7} | {a:>15.2} | {b:>18.2} | {:.3}",
                    a / b
                );
            }
        }
    }
}
