//! Differential fuzzing: every available backend, serial and parallel, against the scalar
//! reference, bit for bit (NaN where the reference has NaN), over arbitrary hyperparameters
//! (valid and not), lengths, raw bit patterns, sub-slice offsets, several steps with changing lr,
//! f32 and f64, under PyTorch's, optax's and Keras's semantics with every option. Invalid input
//! must give the same error everywhere and leave every buffer as it was.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rmsprop_simd::{
    reference, Backend, Element, Hyperparameters, KerasOptions, Kernel, OptaxOptions, Semantics,
    State, Threading,
};

/// A hyperparameter: mostly in the useful range, sometimes any `f64` at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Value {
    Zero,
    One,
    /// `n / 65535`: the common range [0, 1].
    Unit(u16),
    /// `n / 1024`: up to 64, covers alpha > 1 and large lr.
    Wide(u16),
    /// Any bits: negative, NaN, infinite, huge, subnormal.
    Raw(f64),
}

impl Value {
    fn get(self) -> f64 {
        match self {
            Value::Zero => 0.0,
            Value::One => 1.0,
            Value::Unit(n) => n as f64 / 65535.0,
            Value::Wide(n) => n as f64 / 1024.0,
            Value::Raw(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    double: bool,
    lrs: [Value; 3],
    steps: u8,
    alpha: Value,
    eps: Value,
    weight_decay: Value,
    momentum: Value,
    centered: bool,
    maximize: bool,
    /// 0: PyTorch; 1: optax; 2: Keras (taken modulo 3).
    semantics: u8,
    /// optax: eps_in_sqrt, nesterov, bias_correction; Keras: lr_through_f32 (the first).
    options: [bool; 3],
    initial_scale: Value,
    /// The step number (optax's bias correction); 0 is refused there.
    step: u16,
    offset: u8,
    /// The raw data is tiled `1 + tile % 4` times, so that inputs of a few KiB reach the lengths
    /// where the parallel path splits buffers into chunks (>= 128 elements).
    tile: u8,
    /// Raw bits: five buffers, interleaved (element i of buffer j is `bits[5 * i + j]`).
    bits: Vec<u64>,
}

trait FromBits: Element {
    fn from_raw(bits: u64) -> Self;
}
impl FromBits for f32 {
    fn from_raw(bits: u64) -> Self {
        f32::from_bits(bits as u32)
    }
}
impl FromBits for f64 {
    fn from_raw(bits: u64) -> Self {
        f64::from_bits(bits)
    }
}

#[derive(Clone, Debug)]
struct Buffers<T>([Vec<T>; 5]);

fn same<T: Element>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits_u64() == y.to_bits_u64() || (x.is_nan() && y.is_nan()))
}

/// Bit-for-bit equality (NaN payloads included): what "unchanged" means.
fn identical<T: Element>(a: &Buffers<T>, b: &Buffers<T>) -> bool {
    a.0.iter().zip(&b.0).all(|(x, y)| {
        x.iter()
            .zip(y)
            .all(|(p, q)| p.to_bits_u64() == q.to_bits_u64())
    })
}

type StepFn<'f, T> =
    dyn Fn(&Hyperparameters, &mut [T], &[T], State<'_, T>) -> Result<(), rmsprop_simd::Error> + 'f;

fn step_range<T: Element>(
    bufs: &mut Buffers<T>,
    hp: &Hyperparameters,
    range: std::ops::Range<usize>,
    f: &StepFn<'_, T>,
) -> Result<(), rmsprop_simd::Error> {
    let [params, grads, square_avg, grad_avg, momentum_buffer] = &mut bufs.0;
    let state = rmsprop_simd_support::state::state_for(
        hp,
        &mut square_avg[range.clone()],
        &mut grad_avg[range.clone()],
        &mut momentum_buffer[range.clone()],
    );
    f(hp, &mut params[range.clone()], &grads[range], state)
}

fn run<T: FromBits>(input: &Input) {
    let raw = input.bits.len() / 5;
    let n = raw * (1 + input.tile as usize % 4);
    let start = Buffers::<T>(std::array::from_fn(|j| {
        (0..n)
            .map(|i| T::from_raw(input.bits[5 * (i % raw) + j]))
            .collect()
    }));
    let offset = (input.offset as usize % 8).min(n);
    let range = offset..n;
    let base = Hyperparameters {
        lr: 0.0,
        alpha: input.alpha.get(),
        eps: input.eps.get(),
        weight_decay: input.weight_decay.get(),
        momentum: input.momentum.get(),
        centered: input.centered,
        maximize: input.maximize,
        semantics: match input.semantics % 3 {
            0 => Semantics::PyTorch,
            1 => Semantics::Optax(OptaxOptions {
                initial_scale: input.initial_scale.get(),
                eps_in_sqrt: input.options[0],
                nesterov: input.options[1],
                bias_correction: input.options[2],
            }),
            _ => Semantics::Keras(KerasOptions {
                lr_through_f32: input.options[0],
            }),
        },
        step: input.step as u64,
    };
    let steps = 1 + input.steps as usize % 3;

    let mut kernels = Vec::new();
    for backend in Backend::available() {
        kernels.push(
            Kernel::new()
                .with_backend(backend)
                .with_threading(Threading::Serial),
        );
        kernels.push(
            Kernel::new()
                .with_backend(backend)
                .with_parallel_min_len(128),
        );
    }

    let mut want = start.clone();
    let mut got: Vec<Buffers<T>> = kernels.iter().map(|_| start.clone()).collect();
    for s in 0..steps {
        let hp = Hyperparameters {
            lr: input.lrs[s].get(),
            ..base
        };
        let before = want.clone();
        let expected = step_range(&mut want, &hp, range.clone(), &reference::step);
        if expected.is_err() {
            assert!(identical(&want, &before), "reference wrote on error");
        }
        for (kernel, bufs) in kernels.iter().zip(got.iter_mut()) {
            let own_before = bufs.clone();
            let result = step_range(bufs, &hp, range.clone(), &|hp, p, g, st| {
                kernel.step(hp, p, g, st)
            });
            assert_eq!(format!("{result:?}"), format!("{expected:?}"), "{kernel:?}");
            if result.is_err() {
                assert!(identical(bufs, &own_before), "{kernel:?} wrote on error");
            }
            for j in 0..5 {
                assert!(
                    same(&bufs.0[j], &want.0[j]),
                    "{} {:?} {}: buffer {j} differs from the reference after step {s} ({hp:?})\n got  {:?}\n want {:?}",
                    kernel.backend(),
                    kernel.threading(),
                    T::NAME,
                    bufs.0[j],
                    want.0[j]
                );
            }
        }
    }
}

fuzz_target!(|input: Input| {
    if input.double {
        run::<f64>(&input);
    } else {
        run::<f32>(&input);
    }
});
