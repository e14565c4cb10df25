//! Workloads shared by the benches and the performance examples: the five variants, their
//! minimal traffic, and the model shape lists.

use rmsprop_simd::{Element, Hyperparameters};

/// A named set of hyperparameters.
#[derive(Clone, Copy)]
pub struct Variant {
    pub name: &'static str,
    pub hp: Hyperparameters,
}

/// plain, weight_decay, centered, momentum, and all of them (+ maximize).
pub fn variants() -> [Variant; 5] {
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
        },
        Variant {
            name: "weight_decay",
            hp: Hyperparameters {
                weight_decay: 1e-2,
                ..d
            },
        },
        Variant {
            name: "centered",
            hp: Hyperparameters {
                centered: true,
                ..d
            },
        },
        Variant {
            name: "momentum",
            hp: Hyperparameters { momentum: 0.9, ..d },
        },
        Variant {
            name: "all",
            hp: all,
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
