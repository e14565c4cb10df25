//! A whole model's step through `RmsProp` (every tensor of the ResNet-50 and GPT-2 small shape
//! lists in `support/models/`) against one contiguous buffer of the same total size, serial and
//! parallel, f32, plain and momentum+centered. The goal: the model step within 10% of the
//! contiguous one.
//!
//! ```text
//! cargo bench --bench model
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rmsprop_simd::{Hyperparameters, Kernel, Threading};
use std::time::Duration;

use rmsprop_simd_support::model;
use rmsprop_simd_support::workloads::shapes;

fn bench_model(c: &mut Criterion, name: &str, list: &str) {
    let shapes = shapes(list);
    let lens: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let total: usize = lens.iter().sum();
    let mut group = c.benchmark_group(format!("model/{name}"));
    group
        .throughput(Throughput::Elements(total as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    let d = Hyperparameters::default();
    for (variant, hp) in [
        ("plain", d),
        (
            "momentum_centered",
            Hyperparameters {
                momentum: 0.9,
                centered: true,
                ..d
            },
        ),
    ] {
        for (threads_name, threading) in [
            ("serial", Threading::Serial),
            ("parallel", Threading::Parallel),
        ] {
            let kernel = Kernel::new().with_threading(threading);
            // the model: one buffer per tensor
            let mut tensors = model::Tensors::new(&lens, hp, kernel);
            group.bench_function(
                BenchmarkId::new(format!("{variant}/{threads_name}/tensors"), total),
                |b| b.iter(|| tensors.step()),
            );
            drop(tensors);
            // the same number of elements in one buffer
            let mut contiguous = model::Contiguous::new(total, hp, kernel);
            group.bench_function(
                BenchmarkId::new(format!("{variant}/{threads_name}/contiguous"), total),
                |b| b.iter(|| contiguous.step()),
            );
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_model(c, "resnet50", rmsprop_simd_support::models::RESNET50);
    bench_model(c, "gpt2-small", rmsprop_simd_support::models::GPT2_SMALL);
}

criterion_group!(model, benches);
criterion_main!(model);
