//! One optimizer step over a whole model (the ResNet-50 and GPT-2 small shape lists of
//! `support/models/`) through `RmsProp`, against one contiguous buffer of the same total size,
//! measured alternately (tensors, contiguous, tensors, ...) so that the noise of a shared machine
//! hits both alike; prints the best of each and their ratio.
//!
//! ```text
//! cargo run --release --example model_step
//! ```

use rmsprop_simd::{Hyperparameters, Kernel, Threading};
use std::time::Instant;

use rmsprop_simd_support::model;
use rmsprop_simd_support::workloads::shapes;

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
        ("resnet50", rmsprop_simd_support::models::RESNET50),
        ("gpt2-small", rmsprop_simd_support::models::GPT2_SMALL),
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
                let mut tensors = model::Tensors::new(&lens, hp, kernel);
                let mut contiguous = model::Contiguous::new(total, hp, kernel);
                let (mut best_tensors, mut best_contiguous) = (f64::INFINITY, f64::INFINITY);
                for round in 0..=rounds {
                    let t = Instant::now();
                    tensors.step();
                    let tensors_secs = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    contiguous.step();
                    let contiguous_secs = t.elapsed().as_secs_f64();
                    if round > 0 {
                        // round 0 warms up: first touch of the lazily allocated state
                        best_tensors = best_tensors.min(tensors_secs);
                        best_contiguous = best_contiguous.min(contiguous_secs);
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
