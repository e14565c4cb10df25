//! API fuzzing: arbitrary buffer lengths, present or absent state buffers, and arbitrary
//! hyperparameters. The call must return `Ok` exactly when the input is valid (decided here,
//! independently of the crate's own checks), never panic, and on error leave every buffer
//! bit-for-bit unchanged, on every backend, serial and parallel.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rmsprop_simd::{Backend, Element, Error, Hyperparameters, Kernel, State, Threading};

#[derive(Arbitrary, Debug)]
struct Input {
    double: bool,
    /// Lengths of params, grads, square_avg, grad_avg, momentum_buffer (taken modulo 700).
    lens: [u16; 5],
    give_grad_avg: bool,
    give_momentum_buffer: bool,
    /// Either a small choice of typical values or raw bits, per hyperparameter.
    values: [(bool, u8, f64); 5],
    centered: bool,
    maximize: bool,
}

fn pick((raw, choice, bits): (bool, u8, f64)) -> f64 {
    if raw {
        bits
    } else {
        [0.0, 1e-8, 1e-2, 0.5, 0.9, 0.99, 1.0, 2.0, -0.0, -1e-3][choice as usize % 10]
    }
}

/// The validity rule, written independently of the crate: PyTorch's `>= 0`, plus finite, plus
/// finite once rounded to `T` (and `1 - alpha` too).
fn valid_value<T: Element>(x: f64) -> bool {
    x.is_finite() && x >= 0.0 && T::from_f64(x).is_finite()
}

fn run<T: Element>(input: &Input) {
    let l = input.lens.map(|x| x as usize % 700);
    let hp = Hyperparameters {
        lr: pick(input.values[0]),
        alpha: pick(input.values[1]),
        eps: pick(input.values[2]),
        weight_decay: pick(input.values[3]),
        momentum: pick(input.values[4]),
        centered: input.centered,
        maximize: input.maximize,
        // PyTorch's semantics: the validity rule below is PyTorch's (the differential target
        // covers optax's and Keras's, whose errors every backend must agree on)
        ..Default::default()
    };
    let hp_ok = [hp.lr, hp.alpha, hp.eps, hp.weight_decay, hp.momentum]
        .into_iter()
        .all(valid_value::<T>)
        && T::from_f64(1.0 - hp.alpha).is_finite();
    let needs_momentum = hp.momentum > 0.0;
    let state_ok =
        input.give_grad_avg == hp.centered && input.give_momentum_buffer == needs_momentum;
    let lens_ok = l[1] == l[0]
        && l[2] == l[0]
        && (!input.give_grad_avg || l[3] == l[0])
        && (!input.give_momentum_buffer || l[4] == l[0]);
    let valid = hp_ok && state_ok && lens_ok;

    let mut kernels = Vec::new();
    for backend in Backend::available() {
        for threading in [Threading::Serial, Threading::Parallel] {
            kernels.push(
                Kernel::new()
                    .with_backend(backend)
                    .with_threading(threading)
                    .with_parallel_min_len(128),
            );
        }
    }
    for kernel in kernels {
        let fill = |n: usize, k: usize| {
            (0..n)
                .map(|i| T::from_f64((i * 5 + k) as f64 * 0.01))
                .collect::<Vec<T>>()
        };
        let mut bufs: Vec<Vec<T>> = (0..5).map(|k| fill(l[k], k)).collect();
        let before = bufs.clone();
        let [params, grads, square_avg, grad_avg, momentum_buffer] = &mut bufs[..] else {
            unreachable!()
        };
        let mut state = State::new(&mut square_avg[..]);
        if input.give_grad_avg {
            state = state.with_grad_avg(&mut grad_avg[..]);
        }
        if input.give_momentum_buffer {
            state = state.with_momentum_buffer(&mut momentum_buffer[..]);
        }
        let result = kernel.step(&hp, &mut params[..], &grads[..], state);
        match &result {
            Ok(()) => assert!(valid, "accepted invalid input: {hp:?} lens {l:?} {input:?}"),
            Err(e) => {
                assert!(!valid, "refused valid input with {e}: {hp:?} lens {l:?}");
                assert!(!e.to_string().is_empty());
                let kind_ok = match e {
                    Error::InvalidHyperparameter { .. } => !hp_ok,
                    Error::MissingState { .. } | Error::UnexpectedState { .. } => !state_ok,
                    Error::LengthMismatch { .. } => !lens_ok,
                    _ => false,
                };
                assert!(kind_ok, "wrong error {e:?} for {hp:?} lens {l:?} {input:?}");
                let unchanged = bufs.iter().zip(&before).all(|(a, b)| {
                    a.iter()
                        .zip(b)
                        .all(|(x, y)| x.to_bits_u64() == y.to_bits_u64())
                });
                assert!(
                    unchanged,
                    "{} {:?} wrote on error {e}",
                    kernel.backend(),
                    kernel.threading()
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
