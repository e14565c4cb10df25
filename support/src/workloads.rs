//! Workloads shared by the benches and the performance examples: the five variants, their
//! minimal traffic, and the model shape lists.

use rmsprop_simd::{Element, Hyperparameters, OptaxOptions, Semantics};

/// A named set of hyperparameters, and how many divisions per element its step does (each
/// variant does one square root; the divider-bound ceiling depends on both).
#[derive(Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub hp: Hyperparameters,
    pub divs: usize,
}

/// PyTorch's plain, weight_decay, centered, momentum, and all of them (+ maximize); optax's
/// default and everything (centered, Nesterov momentum, eps outside the sqrt, bias correction:
/// three divisions per element); Keras's default and everything (centered, momentum, decoupled
/// weight decay).
pub fn variants() -> Vec<Variant> {
    let mut v = pytorch_variants().to_vec();
    let optax_all = Hyperparameters {
        centered: true,
        momentum: 0.9,
        semantics: Semantics::Optax(OptaxOptions {
            initial_scale: 0.0,
            eps_in_sqrt: false,
            nesterov: true,
            bias_correction: true,
        }),
        step: 10,
        ..Hyperparameters::optax(1e-2)
    };
    let keras_all = Hyperparameters {
        centered: true,
        momentum: 0.9,
        weight_decay: 1e-2,
        ..Hyperparameters::keras()
    };
    v.extend([
        Variant {
            name: "optax",
            hp: Hyperparameters::optax(1e-2),
            divs: 1,
        },
        Variant {
            name: "optax_all",
            hp: optax_all,
            divs: 3,
        },
        Variant {
            name: "keras",
            hp: Hyperparameters::keras(),
            divs: 1,
        },
        Variant {
            name: "keras_all",
            hp: keras_all,
            divs: 1,
        },
    ]);
    v
}

/// PyTorch's five variants.
pub fn pytorch_variants() -> [Variant; 5] {
    let d = Hyperparameters::default();
    let all = Hyperparameters {
        weight_decay: 1e-2,
        momentum: 0.9,
        centered: true,
        maximize: true,
        ..d
    };
    [
        Variant {
            name: "plain",
            hp: d,
            divs: 1,
        },
        Variant {
            name: "weight_decay",
            hp: Hyperparameters {
                weight_decay: 1e-2,
                ..d
            },
            divs: 1,
        },
        Variant {
            name: "centered",
            hp: Hyperparameters {
                centered: true,
                ..d
            },
            divs: 1,
        },
        Variant {
            name: "momentum",
            hp: Hyperparameters { momentum: 0.9, ..d },
            divs: 1,
        },
        Variant {
            name: "all",
            hp: all,
            divs: 1,
        },
    ]
}

/// `(arrays read, arrays written)` once each: params, grads, square_avg (+ grad_avg,
/// momentum_buffer).
pub fn traffic(hp: &Hyperparameters) -> (usize, usize) {
    let (c, m) = hp.uses_state();
    (3 + c as usize + m as usize, 2 + c as usize + m as usize)
}

/// Shapes from a `name AxBxC` list (`support/models/*.txt`, [`crate::models`]).
pub fn shapes(list: &str) -> Vec<Vec<usize>> {
    list.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let shape = l.split_whitespace().nth(1).expect("name shape");
            shape
                .split('x')
                .map(|d| d.parse().expect("dimension"))
                .collect()
        })
        .collect()
}

/// Deterministic values in (5e-5, 0.1), never exactly zero (a gradient that stays 0 decays its
/// square_avg into subnormals), computed in f64 and rounded once to `T`.
pub fn fill<T: Element>(len: usize, seed: usize) -> Vec<T> {
    (0..len)
        .map(|i| T::from_f64((((i * 7 + seed) % 1000) as f64 + 0.5) * 1e-4))
        .collect()
}
