//! Criterion benches of one optimizer step: f32/f64, five variants, sizes 1e3..3e7 (1e8 with
//! `RMSPROP_BENCH_HUGE=1`), every available backend forced plus the auto-dispatched default,
//! serial and parallel, and a multi-pass baseline shaped like `torch.optim.RMSprop`'s foreach
//! path. Throughput is reported as elements/s and as bytes/s of the minimal traffic (each input
//! read once, each output written once: 20 B/element for plain f32, 36 for centered+momentum).
//!
//! ```text
//! cargo bench --bench step                           # everything (long)
//! cargo bench --bench step -- 'f32/plain/.*/1000000$' # a filter
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rmsprop_simd::{Backend, Element, Hyperparameters, Kernel, Threading};
use std::time::{Duration, Instant};

use rmsprop_simd_support::workloads::{self, variants};

/// Minimal traffic per element: each array read once, each output written once.
fn bytes_per_element<T>(hp: &Hyperparameters) -> u64 {
    let (read, written) = workloads::traffic(hp);
    ((read + written) * std::mem::size_of::<T>()) as u64
}

fn sizes() -> Vec<usize> {
    let mut s = vec![
        1_000, 10_000, 30_000, 100_000, 1_000_000, 10_000_000, 30_000_000,
    ];
    if std::env::var("RMSPROP_BENCH_HUGE").is_ok_and(|v| v == "1") {
        s.push(100_000_000);
    }
    s
}

struct Data<T> {
    /// `(params, square_avg, grad_avg, momentum_buffer)` at the start, restored every 256 steps.
    pristine: Option<Box<Data<T>>>,
    params: Vec<T>,
    grads: Vec<T>,
    square_avg: Vec<T>,
    grad_avg: Vec<T>,
    momentum_buffer: Vec<T>,
}

impl<T: Element> Data<T> {
    fn new(len: usize, hp: &Hyperparameters) -> Self {
        let (centered, momentum) = hp.uses_state();
        let v = |f: fn(usize) -> f64, on: bool| {
            (0..if on { len } else { 0 })
                .map(|i| T::from_f64(f(i)))
                .collect::<Vec<T>>()
        };
        let mut data = Data {
            pristine: None,
            params: v(|i| ((i % 1013) as f64 - 500.0) * 1e-3, true),
            // never exactly zero: a gradient that stays 0 decays square_avg into subnormals
            grads: v(|i| ((i % 997) as f64 - 498.5) * 1e-4, true),
            square_avg: v(|i| (i % 89) as f64 * 1e-6, true),
            grad_avg: v(|i| ((i % 83) as f64 - 41.0) * 1e-5, centered),
            momentum_buffer: v(|i| ((i % 79) as f64 - 39.0) * 1e-4, momentum),
        };
        data.pristine = Some(Box::new(Data {
            pristine: None,
            params: data.params.clone(),
            grads: Vec::new(),
            square_avg: data.square_avg.clone(),
            grad_avg: data.grad_avg.clone(),
            momentum_buffer: data.momentum_buffer.clone(),
        }));
        data
    }

    fn reset(&mut self) {
        let p = self.pristine.take().expect("pristine copy");
        self.params.copy_from_slice(&p.params);
        self.square_avg.copy_from_slice(&p.square_avg);
        self.grad_avg.copy_from_slice(&p.grad_avg);
        self.momentum_buffer.copy_from_slice(&p.momentum_buffer);
        self.pristine = Some(p);
    }

    fn step(&mut self, kernel: &Kernel, hp: &Hyperparameters) {
        let state = rmsprop_simd_support::state::state_for(
            hp,
            &mut self.square_avg,
            &mut self.grad_avg,
            &mut self.momentum_buffer,
        );
        kernel
            .step(hp, &mut self.params, &self.grads, state)
            .expect("valid bench input");
    }
}

/// Criterion's `iter_custom` body: `iters` calls of `f`, restoring the data (untimed) every 256
/// calls. Thousands of steps on the same gradients drift some values into the subnormal range,
/// which is 2x slower on x86 and not what a training step sees.
fn timed<T: Element>(data: &mut Data<T>, iters: u64, mut f: impl FnMut(&mut Data<T>)) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        data.reset();
        let batch = (iters - done).min(256);
        let start = Instant::now();
        for _ in 0..batch {
            f(data);
        }
        total += start.elapsed();
        done += batch;
    }
    total
}

fn bench_type<T: Element>(c: &mut Criterion) {
    for variant in variants() {
        let mut group = c.benchmark_group(format!("{}/{}", T::NAME, variant.name));
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(10);
        for len in sizes() {
            group.throughput(Throughput::ElementsAndBytes {
                elements: len as u64,
                bytes: bytes_per_element::<T>(&variant.hp) * len as u64,
            });
            let mut data = Data::<T>::new(len, &variant.hp);
            let mut kernels: Vec<(String, Kernel)> = Vec::new();
            for backend in Backend::available() {
                kernels.push((
                    format!("{backend}/serial"),
                    Kernel::new()
                        .with_backend(backend)
                        .with_threading(Threading::Serial),
                ));
                kernels.push((
                    format!("{backend}/parallel"),
                    Kernel::new().with_backend(backend),
                ));
            }
            kernels.push((
                "auto/serial".into(),
                Kernel::new().with_threading(Threading::Serial),
            ));
            kernels.push(("auto/parallel".into(), Kernel::new()));
            for (name, kernel) in kernels {
                group.bench_function(BenchmarkId::new(name, len), |b| {
                    b.iter_custom(|iters| timed(&mut data, iters, |d| d.step(&kernel, &variant.hp)))
                });
            }
            if variant.name == "plain" {
                group.bench_function(BenchmarkId::new("multi-pass/serial", len), |b| {
                    b.iter_custom(|iters| {
                        timed(&mut data, iters, |d| {
                            rmsprop_simd_support::multipass::multi_pass_plain(
                                &variant.hp,
                                &mut d.params,
                                &d.grads,
                                &mut d.square_avg,
                            )
                        })
                    })
                });
            }
        }
        group.finish();
    }
}

fn benches(c: &mut Criterion) {
    bench_type::<f32>(c);
    bench_type::<f64>(c);
}

criterion_group!(step, benches);
criterion_main!(step);
