//! Every error path: the right typed error, a clear message, and no buffer written.

use rmsprop_simd_support::backends as support;

use rmsprop_simd::{
    reference, step, Backend, Buffer, Error, Hyperparameters, Kernel, State, Threading,
};

/// Runs `f` on buffers full of recognisable values and asserts it returns `expected` and that
/// not one bit of any buffer changed, for every entry point (free `step`, each backend serial and
/// parallel, and the reference).
fn assert_refused(hp: &Hyperparameters, lens: [usize; 5], give: (bool, bool), expected: &Error) {
    let mut entry_points: Vec<(String, Box<support::StepFn<'static, f32>>)> = vec![
        ("step".into(), Box::new(step)),
        ("reference::step".into(), Box::new(reference::step)),
    ];
    for backend in Backend::available() {
        for threading in [Threading::Serial, Threading::Parallel] {
            let kernel = Kernel::new()
                .with_backend(backend)
                .with_threading(threading)
                .with_parallel_min_len(128);
            entry_points.push((
                format!("{backend} {threading:?}"),
                Box::new(move |hp, p, g, s| kernel.step(hp, p, g, s)),
            ));
        }
    }
    for (name, f) in entry_points {
        let fill = |n: usize, base: f32| (0..n).map(|i| base + i as f32).collect::<Vec<f32>>();
        let mut params = fill(lens[0], 1.0);
        let grads = fill(lens[1], 2.0);
        let mut square_avg = fill(lens[2], 3.0);
        let mut grad_avg = fill(lens[3], 4.0);
        let mut momentum_buffer = fill(lens[4], 5.0);
        let before = (
            params.clone(),
            square_avg.clone(),
            grad_avg.clone(),
            momentum_buffer.clone(),
        );
        let mut state = State::new(&mut square_avg[..]);
        if give.0 {
            state = state.with_grad_avg(&mut grad_avg[..]);
        }
        if give.1 {
            state = state.with_momentum_buffer(&mut momentum_buffer[..]);
        }
        let got = f(hp, &mut params, &grads, state);
        // compared through Debug: NaN values are not `==` to themselves
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", Err::<(), _>(expected)),
            "{name}: {hp:?} lens {lens:?}"
        );
        let message = got.unwrap_err().to_string();
        assert!(!message.is_empty());
        assert_eq!(
            (params, square_avg, grad_avg, momentum_buffer),
            before,
            "{name} wrote on error"
        );
    }
}

const N: usize = 300; // above the parallel threshold used above, so parallel paths are tried

#[test]
fn invalid_hyperparameters_are_refused_untouched() {
    let names = ["lr", "alpha", "eps", "weight_decay", "momentum"];
    let bad = [
        (-1e-3, "must be >= 0"),
        (f64::NAN, "must not be NaN"),
        (f64::INFINITY, "must be finite"),
        (f64::NEG_INFINITY, "must be finite"),
        (1e300, "overflows the element type"), // finite in f64, infinite in f32
    ];
    for name in names {
        for (value, reason) in bad {
            let mut hp = Hyperparameters {
                centered: true,
                momentum: 0.9,
                ..Default::default()
            };
            match name {
                "lr" => hp.lr = value,
                "alpha" => hp.alpha = value,
                "eps" => hp.eps = value,
                "weight_decay" => hp.weight_decay = value,
                _ => hp.momentum = value,
            }
            // keep the state the (invalid) hyperparameters would ask for, so only the value is wrong
            let give = (true, hp.momentum > 0.0);
            let expected = Error::InvalidHyperparameter {
                name,
                value,
                reason,
            };
            assert_refused(&hp, [N; 5], give, &expected);
        }
    }
}

#[test]
fn validate_and_display_name_the_value() {
    let hp = Hyperparameters {
        eps: -1.0,
        ..Default::default()
    };
    let err = hp.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid hyperparameter eps = -1.0: must be >= 0"
    );
    // 1e300 fits f64, so `validate` (the f64 check) accepts it; an f32 step refuses it
    assert!(Hyperparameters {
        lr: 1e300,
        ..Default::default()
    }
    .validate()
    .is_ok());
}

#[test]
fn length_mismatches_are_refused_untouched() {
    let hp = Hyperparameters {
        centered: true,
        momentum: 0.9,
        ..Default::default()
    };
    let cases = [
        ([N, N - 1, N, N, N], Buffer::Grads, N - 1),
        ([N, N + 1, N, N, N], Buffer::Grads, N + 1),
        ([N, N, 0, N, N], Buffer::SquareAvg, 0),
        ([N, N, N, N - 64, N], Buffer::GradAvg, N - 64),
        ([N, N, N, N, 1], Buffer::MomentumBuffer, 1),
        ([0, 0, 1, 0, 0], Buffer::SquareAvg, 1),
    ];
    for (lens, buffer, actual) in cases {
        let expected = Error::LengthMismatch {
            buffer,
            expected: lens[0],
            actual,
        };
        assert_refused(&hp, lens, (true, true), &expected);
    }
    let msg = Error::LengthMismatch {
        buffer: Buffer::Grads,
        expected: 3,
        actual: 2,
    }
    .to_string();
    assert_eq!(
        msg,
        "length mismatch: grads has 2 elements but params has 3"
    );
}

#[test]
fn missing_and_unexpected_state_is_refused_untouched() {
    let centered = Hyperparameters {
        centered: true,
        ..Default::default()
    };
    let momentum = Hyperparameters {
        momentum: 0.9,
        ..Default::default()
    };
    let plain = Hyperparameters::default();
    assert_refused(
        &centered,
        [N; 5],
        (false, false),
        &Error::MissingState {
            buffer: Buffer::GradAvg,
        },
    );
    assert_refused(
        &momentum,
        [N; 5],
        (false, false),
        &Error::MissingState {
            buffer: Buffer::MomentumBuffer,
        },
    );
    assert_refused(
        &plain,
        [N; 5],
        (true, false),
        &Error::UnexpectedState {
            buffer: Buffer::GradAvg,
        },
    );
    assert_refused(
        &plain,
        [N; 5],
        (false, true),
        &Error::UnexpectedState {
            buffer: Buffer::MomentumBuffer,
        },
    );
    assert_refused(
        &centered,
        [N; 5],
        (true, true),
        &Error::UnexpectedState {
            buffer: Buffer::MomentumBuffer,
        },
    );
    assert_eq!(
        Error::MissingState {
            buffer: Buffer::GradAvg
        }
        .to_string(),
        "missing state buffer grad_avg: it is required when centered = true"
    );
    assert_eq!(
        Error::UnexpectedState {
            buffer: Buffer::MomentumBuffer
        }
        .to_string(),
        "unexpected state buffer momentum_buffer: it is used only when momentum > 0"
    );
}

#[test]
fn empty_buffers_are_a_valid_no_op() {
    let hp = Hyperparameters {
        centered: true,
        momentum: 0.9,
        weight_decay: 0.1,
        ..Default::default()
    };
    for backend in Backend::available() {
        for threading in [Threading::Serial, Threading::Parallel] {
            let kernel = Kernel::new()
                .with_backend(backend)
                .with_threading(threading);
            let empty = Vec::<f64>::new;
            let (mut p, g, mut v, mut ga, mut b) = (empty(), empty(), empty(), empty(), empty());
            let state = State::new(&mut v[..])
                .with_grad_avg(&mut ga)
                .with_momentum_buffer(&mut b);
            assert_eq!(kernel.step(&hp, &mut p, &g, state), Ok(()));
        }
    }
}

/// What optax's and Keras's semantics refuse: options the library does not have, a bias
/// correction without a step number, a learning rate Keras cannot hold in float32.
#[test]
fn framework_semantics_refuse_what_their_library_lacks() {
    use rmsprop_simd::{KerasOptions, OptaxOptions, Semantics};
    let optax_bc = Hyperparameters {
        semantics: Semantics::Optax(OptaxOptions {
            bias_correction: true,
            ..Default::default()
        }),
        ..Hyperparameters::optax(1e-3)
    };
    let cases: [(Hyperparameters, &str, (bool, bool)); 5] = [
        (
            Hyperparameters {
                maximize: true,
                ..Hyperparameters::optax(1e-3)
            },
            "maximize",
            (false, false),
        ),
        (
            Hyperparameters {
                maximize: true,
                ..Hyperparameters::keras()
            },
            "maximize",
            (false, false),
        ),
        (
            Hyperparameters {
                weight_decay: 0.1,
                ..Hyperparameters::optax(1e-3)
            },
            "weight_decay",
            (false, false),
        ),
        (optax_bc, "step", (false, false)),
        (
            Hyperparameters {
                semantics: Semantics::Optax(OptaxOptions {
                    initial_scale: -1.0,
                    ..Default::default()
                }),
                ..Hyperparameters::optax(1e-3)
            },
            "initial_scale",
            (false, false),
        ),
    ];
    for (hp, name, give) in cases {
        let err = rmsprop_simd::Coefficients::<f32>::new(&hp).unwrap_err();
        assert!(
            matches!(err, Error::InvalidHyperparameter { name: n, .. } if n == name),
            "{name}: {err}"
        );
        assert_refused(&hp, [N; 5], give, &err);
    }
    // with a step number the bias correction is fine
    assert!(Hyperparameters {
        step: 1,
        ..optax_bc
    }
    .validate()
    .is_ok());
    // Keras keeps lr in float32: 1e300 is refused for f64 parameters too, unless asked not to
    let keras = Hyperparameters {
        lr: 1e300,
        ..Hyperparameters::keras()
    };
    assert!(rmsprop_simd::Coefficients::<f64>::new(&keras).is_err());
    let exact = Hyperparameters {
        semantics: Semantics::Keras(KerasOptions {
            lr_through_f32: false,
        }),
        ..keras
    };
    assert!(rmsprop_simd::Coefficients::<f64>::new(&exact).is_ok());
}
