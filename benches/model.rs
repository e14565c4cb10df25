//! A whole model's step through `RmsProp` (every tensor of the ResNet-50 and GPT-2 small shape
//! lists in `benches/models/`) against one contiguous buffer of the same total size, serial and
//! parallel, f32, plain and momentum+centered. The goal: the model step within 10% of the
//! contiguous one.
//!
//! ```text
//! cargo bench --bench model
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rmsprop_simd::{Hyperparameters, Kernel, RmsProp, State, Threading};
use std::time::Duration;

#[path = "support/workloads.rs"]
mod workloads;
use workloads::{fill, shapes};

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
            let mut params: Vec<Vec<f32>> =
                lens.iter().enumerate().map(|(i, &n)| fill(n, i)).collect();
            let grads: Vec<Vec<f32>> = lens
                .iter()
                .enumerate()
                .map(|(i, &n)| fill(n, i + 500))
                .collect();
            let mut opt = RmsProp::<f32>::new(shapes.clone(), hp)
                .unwrap()
                .with_kernel(kernel);
            group.bench_function(
                BenchmarkId::new(format!("{variant}/{threads_name}/tensors"), total),
                |b| {
                    b.iter(|| {
                        let mut p: Vec<&mut [f32]> =
                            params.iter_mut().map(|p| &mut p[..]).collect();
                        let g: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(&g[..])).collect();
                        opt.step(&mut p, &g).unwrap();
                    })
                },
            );
            drop((params, grads, opt));
            // the same number of elements in one buffer
            let mut p = fill(total, 1);
            let g = fill(total, 2);
            let (mut v, mut ga, mut mb) = (
                vec![0.0f32; total],
                vec![0.0f32; total],
                vec![0.0f32; total],
            );
            group.bench_function(
                BenchmarkId::new(format!("{variant}/{threads_name}/contiguous"), total),
                |b| {
                    b.iter(|| {
                        let mut state = State::new(&mut v[..]);
                        if hp.centered {
                            state = state.with_grad_avg(&mut ga[..]);
                        }
                        if hp.momentum > 0.0 {
                            state = state.with_momentum_buffer(&mut mb[..]);
                        }
                        kernel.step(&hp, &mut p, &g, state).unwrap();
                    })
                },
            );
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_model(c, "resnet50", include_str!("models/resnet50.txt"));
    bench_model(c, "gpt2-small", include_str!("models/gpt2-small.txt"));
}

criterion_group!(model, benches);
criterion_main!(model);
