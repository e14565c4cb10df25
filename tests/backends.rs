//! Every backend against the scalar reference, bit for bit: exhaustive small lengths and all
//! variants, special values, chunk boundaries, thread counts, and proptest.

use rmsprop_simd_support::backends as support;

use proptest::prelude::*;
use rmsprop_simd::{
    Backend, BackendKind, Element, Hyperparameters, KerasOptions, Kernel, OptaxOptions, Semantics,
    Threading,
};
use support::{backend_or_skip, check_against_reference, kernels_for, variants, Buffers};

/// Values that break naive SIMD code: signed zeros, infinities, NaN, subnormals, extremes.
trait TestFloat: Element {
    fn from_bits_u64(bits: u64) -> Self;
    fn specials() -> Vec<Self>;
}

macro_rules! test_float {
    ($t:ident, $bits:ident) => {
        impl TestFloat for $t {
            fn from_bits_u64(bits: u64) -> Self {
                $t::from_bits(bits as $bits)
            }
            fn specials() -> Vec<Self> {
                vec![
                    0.0,
                    -0.0,
                    $t::INFINITY,
                    $t::NEG_INFINITY,
                    $t::NAN,
                    -$t::NAN,
                    $t::from_bits(1), // smallest subnormal
                    -$t::from_bits(1),
                    $t::MIN_POSITIVE - $t::from_bits(1), // largest subnormal
                    $t::MIN_POSITIVE,
                    $t::MAX,
                    -$t::MAX,
                    $t::MAX / 2.0,
                    $t::MAX.sqrt(), // g*g overflows just above this
                    -$t::MAX.sqrt() * 2.0,
                    1.0,
                    -1.0,
                    1.0 - $t::EPSILON / 2.0, // 1 - ulp
                    1.0 + $t::EPSILON,
                    $t::EPSILON,
                    1e-20,
                    1e20,
                ]
            }
        }
    };
}
test_float!(f32, u32);
test_float!(f64, u64);

/// Test inputs from a seeded generator (the support crate's), so failures reproduce.
struct Inputs(rmsprop_simd_support::rng::TestRng);
impl Inputs {
    fn new(seed: u64) -> Inputs {
        Inputs(rmsprop_simd_support::rng::seeded(seed))
    }
    fn next(&mut self) -> u64 {
        use rmsprop_simd_support::rng::Rng as _;
        self.0.next_u64()
    }
    /// Mostly ordinary values of mixed scale, one in eight a special value, one in sixteen random
    /// bits.
    fn value<T: TestFloat>(&mut self, non_negative: bool) -> T {
        let r = self.next();
        let x = match r % 16 {
            0 | 1 => {
                let s = T::specials();
                s[(r >> 8) as usize % s.len()]
            }
            2 => T::from_bits_u64(self.next()),
            _ => {
                let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                let scale = 10f64.powi((r >> 8) as i32 % 9 - 6);
                T::from_f64(unit * scale)
            }
        };
        if non_negative && x < T::from_f64(0.0) {
            T::from_f64(-x.to_f64())
        } else {
            x
        }
    }
    fn buffers<T: TestFloat>(&mut self, total: usize) -> Buffers<T> {
        Buffers {
            params: (0..total).map(|_| self.value(false)).collect(),
            grads: (0..total).map(|_| self.value(false)).collect(),
            // usually non-negative, as a real square average is; sometimes anything
            square_avg: (0..total).map(|i| self.value(i % 7 != 0)).collect(),
            grad_avg: (0..total).map(|_| self.value(false)).collect(),
            momentum_buffer: (0..total).map(|_| self.value(false)).collect(),
        }
    }
}

/// Under miri, a subset: each rule with every switch off and every switch on.
fn miri_variants() -> Vec<Hyperparameters> {
    let all = variants();
    if cfg!(miri) {
        [0, 15, 16, 47, 48, 55]
            .into_iter()
            .map(|i| all[i])
            .collect()
    } else {
        all
    }
}

/// Lengths 0..=70 and both sides of 64, 128, 256 and 4096.
fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=70).collect();
    v.extend([127, 128, 129, 255, 256, 257, 4095, 4096, 4097]);
    v
}

fn exhaustive<T: TestFloat>(kind: BackendKind, test: &str) {
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let mut rng = Inputs::new(0x9E37_79B9_7F4A_7C15 ^ kind as u64);
    for kernel in kernels_for(backend) {
        for hp in variants() {
            for len in lengths() {
                let offset = len % 3; // odd offsets: misaligned starts
                let start = rng.buffers::<T>(offset + len + 5);
                check_against_reference(&kernel, &hp, &[0.01, 0.003], &start, offset, len);
            }
        }
    }
}

fn small_cases<T: TestFloat>(kind: BackendKind, test: &str) {
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let mut rng = Inputs::new(0x5EED ^ kind as u64);
    let variants = miri_variants;
    for kernel in kernels_for(backend) {
        for hp in variants() {
            for len in [0, 1, 2, 3, 5, 8, 9, 17, 130] {
                let offset = len % 2;
                let start = rng.buffers::<T>(offset + len + 1);
                check_against_reference(&kernel, &hp, &[0.01, 0.003], &start, offset, len);
            }
        }
    }
}

fn edge_hyperparameters<T: TestFloat>(kind: BackendKind, test: &str) {
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let mut rng = Inputs::new(42 + kind as u64);
    let edges = [
        Hyperparameters {
            alpha: 0.0,
            ..Default::default()
        },
        Hyperparameters {
            alpha: 1.0,
            ..Default::default()
        },
        Hyperparameters {
            alpha: 0.5,
            centered: true,
            ..Default::default()
        }, // lerp switch point
        Hyperparameters {
            alpha: 1.7,
            centered: true,
            momentum: 0.5,
            ..Default::default()
        },
        Hyperparameters {
            eps: 0.0,
            centered: true,
            ..Default::default()
        },
        Hyperparameters {
            lr: 0.0,
            momentum: 0.9,
            ..Default::default()
        },
        Hyperparameters {
            weight_decay: 1e-45,
            ..Default::default()
        }, // rounds to 0 in f32
        Hyperparameters {
            lr: 1e30,
            weight_decay: 1e30,
            momentum: 1e30,
            ..Default::default()
        },
        // optax: decay 1 with bias correction divides by 1 - 1 = 0
        Hyperparameters {
            alpha: 1.0,
            momentum: 0.9,
            semantics: Semantics::Optax(OptaxOptions {
                bias_correction: true,
                nesterov: true,
                ..Default::default()
            }),
            step: 1,
            ..Hyperparameters::optax(0.1)
        },
        Hyperparameters {
            eps: 0.0,
            alpha: 0.0,
            semantics: Semantics::Optax(OptaxOptions {
                eps_in_sqrt: false,
                ..Default::default()
            }),
            ..Hyperparameters::optax(1e-3)
        },
        Hyperparameters {
            alpha: 0.999,
            step: 1_000_000,
            semantics: Semantics::Optax(OptaxOptions {
                bias_correction: true,
                initial_scale: 1.0,
                ..Default::default()
            }),
            ..Hyperparameters::optax(1e-2)
        },
        // Keras: a learning rate rounded through f32 or not, rho 0 and 1, huge decay
        Hyperparameters {
            lr: 0.1,
            alpha: 0.0,
            weight_decay: 1e30,
            momentum: 0.5,
            ..Hyperparameters::keras()
        },
        Hyperparameters {
            lr: 1e-3 / 3.0,
            alpha: 1.0,
            eps: 0.0,
            semantics: Semantics::Keras(KerasOptions {
                lr_through_f32: false,
            }),
            ..Hyperparameters::keras()
        },
    ];
    for kernel in kernels_for(backend) {
        for hp in &edges {
            for centered in [false, true] {
                let hp = Hyperparameters {
                    centered: centered || hp.centered,
                    ..*hp
                };
                if hp.validate().is_err() || rmsprop_simd::Coefficients::<T>::new(&hp).is_err() {
                    continue;
                }
                for len in [0, 1, 7, 33, 100, 300] {
                    let start = rng.buffers::<T>(len + 2);
                    check_against_reference(
                        &kernel,
                        &hp,
                        &[hp.lr, 0.0, hp.lr * 0.5],
                        &start,
                        1,
                        len,
                    );
                }
            }
        }
    }
}

/// Every special value at every lane position of a vector and of the tail, with every other
/// buffer special too: the product of the special list with itself, for each variant.
fn special_grid<T: TestFloat>(kind: BackendKind, test: &str) {
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let s = T::specials();
    let n = s.len() * s.len();
    let start = Buffers {
        params: (0..n).map(|i| s[i % s.len()]).collect(),
        grads: (0..n).map(|i| s[i / s.len()]).collect(),
        square_avg: (0..n).map(|i| s[(i * 7 + 3) % s.len()]).collect(),
        grad_avg: (0..n).map(|i| s[(i * 5 + 1) % s.len()]).collect(),
        momentum_buffer: (0..n).map(|i| s[(i * 3 + 2) % s.len()]).collect(),
    };
    for kernel in kernels_for(backend) {
        for hp in variants() {
            for offset in [0, 1, 5] {
                check_against_reference(&kernel, &hp, &[0.01, 1.0], &start, offset, n - offset);
            }
        }
    }
}

macro_rules! backend_tests {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            /// Short buffers (vector tails, one or two parallel chunks), every variant (a subset
            /// under miri).
            #[test]
            fn small_cases_all_variants() {
                small_cases::<f32>($kind, module_path!());
                small_cases::<f64>($kind, module_path!());
            }
            #[test]
            #[cfg_attr(
                miri,
                ignore = "too slow under miri; covered by small_cases_all_variants"
            )]
            fn exhaustive_lengths_and_variants_f32() {
                exhaustive::<f32>($kind, module_path!());
            }
            #[test]
            #[cfg_attr(
                miri,
                ignore = "too slow under miri; covered by small_cases_all_variants"
            )]
            fn exhaustive_lengths_and_variants_f64() {
                exhaustive::<f64>($kind, module_path!());
            }
            #[test]
            #[cfg_attr(
                miri,
                ignore = "too slow under miri; covered by small_cases_all_variants"
            )]
            fn edge_hyperparameters_f32() {
                edge_hyperparameters::<f32>($kind, module_path!());
            }
            #[test]
            #[cfg_attr(
                miri,
                ignore = "too slow under miri; covered by small_cases_all_variants"
            )]
            fn edge_hyperparameters_f64() {
                edge_hyperparameters::<f64>($kind, module_path!());
            }
            #[test]
            #[cfg_attr(
                miri,
                ignore = "too slow under miri; covered by small_cases_all_variants"
            )]
            fn special_values_grid_f32() {
                special_grid::<f32>($kind, module_path!());
            }
            #[test]
            #[cfg_attr(
                miri,
                ignore = "too slow under miri; covered by small_cases_all_variants"
            )]
            fn special_values_grid_f64() {
                special_grid::<f64>($kind, module_path!());
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(192))]
                #[test]
                #[cfg_attr(miri, ignore = "too slow under miri")]
                fn proptest_f32(case in case_strategy()) {
                    run_case::<f32>($kind, &case);
                }
                #[test]
                #[cfg_attr(miri, ignore = "too slow under miri")]
                fn proptest_f64(case in case_strategy()) {
                    run_case::<f64>($kind, &case);
                }
            }
        }
    };
}

backend_tests!(scalar, BackendKind::Scalar);
backend_tests!(avx2_fma, BackendKind::Avx2Fma);
backend_tests!(avx512, BackendKind::Avx512);
backend_tests!(neon, BackendKind::Neon);

/// One proptest case: hyperparameters, a few learning rates, a length, an offset, a seed for the
/// values.
#[derive(Clone, Debug)]
struct Case {
    hp: Hyperparameters,
    lrs: Vec<f64>,
    len: usize,
    offset: usize,
    seed: u64,
}

fn unit_or_edge() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        0.0..1.0f64,
        (0.0..1.0f64).prop_map(|x| x * 1e-6)
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let semantics = prop_oneof![
        Just(Semantics::PyTorch),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(e, n, b)| Semantics::Optax(
            OptaxOptions {
                initial_scale: 0.0,
                eps_in_sqrt: e,
                nesterov: n,
                bias_correction: b,
            }
        )),
        any::<bool>().prop_map(|f| Semantics::Keras(KerasOptions { lr_through_f32: f })),
    ];
    let hp = (
        unit_or_edge(),                                                  // lr
        prop_oneof![Just(0.99), Just(0.3), unit_or_edge(), 1.0..2.0f64], // alpha
        prop_oneof![Just(1e-8), Just(0.0), 0.0..1e-3f64],                // eps
        prop_oneof![Just(0.0), unit_or_edge()],                          // weight_decay
        prop_oneof![Just(0.0), Just(0.9), unit_or_edge()],               // momentum
        any::<bool>(),
        any::<bool>(),
        semantics,
        1u64..200,
    )
        .prop_map(
            |(lr, alpha, eps, weight_decay, momentum, centered, maximize, semantics, step)| {
                let pytorch = semantics == Semantics::PyTorch;
                let optax = matches!(semantics, Semantics::Optax(_));
                Hyperparameters {
                    lr,
                    alpha,
                    eps,
                    // optax's rmsprop has no weight decay; only PyTorch maximizes
                    weight_decay: if optax { 0.0 } else { weight_decay },
                    momentum,
                    centered,
                    maximize: maximize && pytorch,
                    semantics,
                    step,
                }
            },
        );
    let len = prop_oneof![
        0usize..300,
        prop::sample::select(vec![
            63usize, 64, 65, 127, 128, 129, 191, 192, 193, 4095, 4096, 4097
        ]),
    ];
    (
        hp,
        prop::collection::vec(unit_or_edge(), 1..4),
        len,
        0usize..7,
        any::<u64>(),
    )
        .prop_map(|(hp, lrs, len, offset, seed)| Case {
            hp,
            lrs,
            len,
            offset,
            seed: seed | 1,
        })
}

fn run_case<T: TestFloat>(kind: BackendKind, case: &Case) {
    let Some(backend) = Backend::from_kind(kind) else {
        // the skip is reported (or failed, in CI) by the deterministic tests of this module
        return;
    };
    let mut rng = Inputs::new(case.seed);
    let start = rng.buffers::<T>(case.offset + case.len + 3);
    for kernel in kernels_for(backend) {
        check_against_reference(&kernel, &case.hp, &case.lrs, &start, case.offset, case.len);
    }
}

/// With the switch set (CI), every SIMD backend the CPU supports must be provided by the crate;
/// the per-backend tests then fail rather than skip. Without it, this reports what would skip.
#[test]
fn every_supported_backend_is_provided() {
    for kind in BackendKind::ALL {
        let supported = support::cpu_supports(kind);
        let provided = Backend::from_kind(kind).is_some();
        eprintln!("{kind}: cpu supports {supported}, crate provides {provided}");
        if supported && !provided {
            assert!(
                std::env::var(support::REQUIRE_ENV).is_err(),
                "{kind} is supported by this CPU but not provided"
            );
        }
        assert!(
            !provided || supported || cfg!(miri),
            "{kind} provided on a CPU without it"
        );
    }
    assert!(Backend::available().any(|b| b.kind() == BackendKind::Scalar));
}

/// On aarch64 (run under qemu in CI) the detected backend must be NEON.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_is_detected_on_aarch64() {
    assert_eq!(Backend::detect().kind(), BackendKind::Neon);
    assert_eq!(Backend::neon().map(|b| b.lanes::<f32>()), Some(4));
}

/// The vector widths are the ones each backend promises (so a backend is not silently scalar).
#[test]
fn lane_counts_match_the_instruction_sets() {
    for backend in Backend::available() {
        let (f32_lanes, f64_lanes) = match backend.kind() {
            BackendKind::Scalar => (1, 1),
            BackendKind::Avx2Fma => (8, 4),
            BackendKind::Avx512 => (16, 8),
            BackendKind::Neon => (4, 2),
        };
        assert_eq!(backend.lanes::<f32>(), f32_lanes, "{backend}");
        assert_eq!(backend.lanes::<f64>(), f64_lanes, "{backend}");
    }
}

/// Parallel results equal serial ones for any pool size, at the default threshold and at small
/// ones (many chunks, uneven splits).
#[test]
#[cfg_attr(
    miri,
    ignore = "too slow under miri; small_cases_all_variants covers chunking"
)]
fn parallel_equals_serial_for_any_thread_count() {
    let mut rng = Inputs::new(7);
    let hp = Hyperparameters {
        momentum: 0.9,
        centered: true,
        weight_decay: 0.01,
        ..Default::default()
    };
    let len = rmsprop_simd::PARALLEL_MIN_LEN * 3 + 77;
    let start = rng.buffers::<f32>(len + 3);
    for backend in Backend::available() {
        for threads in [1, 2, 3, 4, 7] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for min_len in [rmsprop_simd::PARALLEL_MIN_LEN, 128, 1000] {
                    let kernel = Kernel::new()
                        .with_backend(backend)
                        .with_threading(Threading::Parallel)
                        .with_parallel_min_len(min_len);
                    check_against_reference(&kernel, &hp, &[0.01, 0.02], &start, 3, len);
                }
            });
        }
    }
}

/// The detected backend is one of the available ones and works through the free `step`.
#[test]
#[cfg_attr(miri, ignore = "too slow under miri")]
fn default_step_uses_detected_backend() {
    let detected = Backend::detect();
    eprintln!("detected backend: {detected}");
    assert!(Backend::available().any(|b| b == detected));
    assert_eq!(Kernel::new().backend(), detected);
    let mut rng = Inputs::new(99);
    let start = rng.buffers::<f64>(5000);
    let hp = Hyperparameters::default();
    let mut got = start.clone();
    got.step_with(&hp, 0, 5000, &|hp, p, g, st| {
        rmsprop_simd::step(hp, p, g, st)
    })
    .unwrap();
    let want = check_against_reference(&Kernel::new(), &hp, &[hp.lr], &start, 0, 5000);
    support::assert_bitwise(&got, &want, &|| "free step()".into());
}
