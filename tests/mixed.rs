//! Mixed precision: every backend against `reference::step_with`, bit for bit, for every storage
//! combination (f32 master weights with bf16/f16/f32 gradients and a bf16/f16 copy; bf16/f16
//! parameters with f32 or 16-bit state), every semantics variant, gradient scaling and clipping,
//! nearest-even and stochastic rounding; exhaustive short lengths, a special-value grid with
//! 16-bit NaN, Inf, subnormals and the largest finite values, and proptest. Also: the kernel's
//! 16-bit conversions against `half` over a sweep of f32 bit patterns, the properties of the
//! scalar stochastic rounding, and its unbiasedness.

use proptest::prelude::*;
use rmsprop_simd::storage::{bf16_stochastic, f16_stochastic, random_bits, Buffer16};
use rmsprop_simd::{
    bf16, f16, reference, BackendKind, Element, Error, Format, Hyperparameters, Kernel, ParamsCopy,
    Rounding, State, StepOptions, Storage,
};
use rmsprop_simd_support::backends::{backend_or_skip, kernels_for, variants};
#[allow(unused_imports)]
use rmsprop_simd_support::rng::Rng as _;
use rmsprop_simd_support::rng::{seeded, TestRng};

/// What the tests need of a storage type beyond [`Storage`].
trait TestStorage: Storage {
    fn from_f32(x: f32) -> Self;
    fn bits(self) -> u64;
    fn nan(self) -> bool;
    /// Any bit pattern (NaN payloads, subnormals...).
    fn from_random_bits(r: u64) -> Self;
    fn specials() -> Vec<Self>;
}

impl TestStorage for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn nan(self) -> bool {
        self.is_nan()
    }
    fn from_random_bits(r: u64) -> Self {
        f32::from_bits(r as u32)
    }
    fn specials() -> Vec<Self> {
        // The 16-bit formats' edges seen from f32, and f32's own.
        let mut v = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7F80_0001), // NaN whose payload is all in the bits bf16 drops
            f32::from_bits(0xFF80_1000), // the same for f16 (payload below bit 13)
            f32::from_bits(1),
            f32::MIN_POSITIVE,
            f32::MAX,
            -f32::MAX,
            65504.0,
            65519.99,
            65520.0, // rounds to f16 infinity
            f32::from_bits(0x7F7F_7FFF),
            f32::from_bits(0x7F7F_8000), // bf16 max + half an ulp: rounds to infinity
            6.1e-5,
            5.96e-8, // f16 subnormal range
            2.98e-8, // half the smallest f16 subnormal
            1e-10,
            1.0,
            -1.0,
            1.0 + f32::EPSILON,
            0.1,
            1e10,
        ];
        v.extend(v.clone().into_iter().map(|x| -x));
        v
    }
}

macro_rules! half_storage {
    ($t:ident) => {
        impl TestStorage for $t {
            fn from_f32(x: f32) -> Self {
                $t::from_f32(x)
            }
            fn bits(self) -> u64 {
                self.to_bits() as u64
            }
            fn nan(self) -> bool {
                self.is_nan()
            }
            fn from_random_bits(r: u64) -> Self {
                $t::from_bits(r as u16)
            }
            fn specials() -> Vec<Self> {
                let mut v = vec![
                    $t::ZERO,
                    $t::NEG_ZERO,
                    $t::INFINITY,
                    $t::NEG_INFINITY,
                    $t::NAN,
                    $t::from_bits($t::INFINITY.to_bits() | 1), // signalling NaN
                    $t::MAX,
                    $t::MIN,
                    $t::MIN_POSITIVE,
                    $t::MIN_POSITIVE_SUBNORMAL,
                    $t::from_bits($t::MIN_POSITIVE.to_bits() - 1), // largest subnormal
                    $t::ONE,
                    $t::NEG_ONE,
                    $t::EPSILON,
                    $t::from_f32(0.1),
                    $t::from_f32(300.0),
                ];
                v.extend(v.clone().into_iter().map(|x| -x));
                v
            }
        }
    };
}
half_storage!(bf16);
half_storage!(f16);

/// Test inputs: mostly ordinary values of mixed scale, one in eight special, one in sixteen
/// random bits.
struct Inputs(TestRng);

impl Inputs {
    fn value<T: TestStorage>(&mut self, non_negative: bool) -> T {
        let r = self.0.next_u64();
        let x = match r % 16 {
            0 | 1 => {
                let s = T::specials();
                s[(r >> 8) as usize % s.len()]
            }
            2 => T::from_random_bits(self.0.next_u64()),
            _ => {
                let unit = (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
                let scale = 10f64.powi((r >> 8) as i32 % 7 - 4);
                T::from_f32((unit * scale) as f32)
            }
        };
        if non_negative && x.widen().to_f64() < 0.0 {
            T::round(-x.widen())
        } else {
            x
        }
    }

    fn vec<T: TestStorage>(&mut self, n: usize, non_negative: bool) -> Vec<T> {
        (0..n)
            .map(|i| self.value(non_negative && i % 7 != 0))
            .collect()
    }
}

/// One step's buffers in their storage types (the state types are `S`; the copy is either).
#[derive(Clone, Debug)]
struct Mixed<P, G, S> {
    params: Vec<P>,
    grads: Vec<G>,
    square_avg: Vec<S>,
    grad_avg: Vec<S>,
    momentum_buffer: Vec<S>,
    copy_bf16: Vec<bf16>,
    copy_f16: Vec<f16>,
}

impl<P: TestStorage, G: TestStorage, S: TestStorage> Mixed<P, G, S>
where
    G: Storage<Compute = P::Compute>,
    S: Storage<Compute = P::Compute>,
{
    fn random(rng: &mut Inputs, n: usize) -> Self {
        Mixed {
            params: rng.vec(n, false),
            grads: rng.vec(n, false),
            square_avg: rng.vec(n, true),
            grad_avg: rng.vec(n, false),
            momentum_buffer: rng.vec(n, false),
            copy_bf16: vec![bf16::from_bits(0x5555); n],
            copy_f16: vec![f16::from_bits(0x5555); n],
        }
    }

    /// One step on `range`, by `kernel` (or the reference when `None`).
    fn step(
        &mut self,
        kernel: Option<&Kernel>,
        hp: &Hyperparameters,
        opts: &StepOptions,
        copy: Option<Format>,
        range: std::ops::Range<usize>,
    ) -> Result<(), Error> {
        let (centered, momentum) = hp.uses_state();
        let mut state = State::new(&mut self.square_avg[range.clone()]);
        if centered {
            state = state.with_grad_avg(&mut self.grad_avg[range.clone()]);
        }
        if momentum {
            state = state.with_momentum_buffer(&mut self.momentum_buffer[range.clone()]);
        }
        let copy = match copy {
            Some(Format::Bf16) => Some(ParamsCopy::from(&mut self.copy_bf16[range.clone()])),
            Some(Format::F16) => Some(ParamsCopy::from(&mut self.copy_f16[range.clone()])),
            _ => None,
        };
        let p = &mut self.params[range.clone()];
        let g = &self.grads[range];
        match kernel {
            Some(k) => k.step_with(hp, opts, p, g, state, copy),
            None => reference::step_with(hp, opts, p, g, state, copy),
        }
    }

    fn assert_same(&self, want: &Self, what: &dyn Fn() -> String) {
        fn cmp<T: TestStorage>(name: &str, got: &[T], want: &[T], what: &dyn Fn() -> String) {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                if !(g.bits() == w.bits() || (g.nan() && w.nan())) {
                    panic!(
                        "{}: {name}[{i}] = {g:?} ({:#x}), reference {w:?} ({:#x})",
                        what(),
                        g.bits(),
                        w.bits()
                    );
                }
            }
        }
        cmp("params", &self.params, &want.params, what);
        cmp("square_avg", &self.square_avg, &want.square_avg, what);
        cmp("grad_avg", &self.grad_avg, &want.grad_avg, what);
        cmp(
            "momentum_buffer",
            &self.momentum_buffer,
            &want.momentum_buffer,
            what,
        );
        cmp("copy_bf16", &self.copy_bf16, &want.copy_bf16, what);
        cmp("copy_f16", &self.copy_f16, &want.copy_f16, what);
    }
}

/// The option sets every combination runs: plain, power-of-two and other scales, clamping, a
/// multiplier, all at once, and stochastic rounding.
fn option_sets() -> Vec<StepOptions> {
    let sr = Rounding::Stochastic {
        seed: 0xC0FFEE,
        step: 7,
    };
    vec![
        StepOptions::default(),
        StepOptions {
            rounding: sr,
            ..StepOptions::default()
        },
        StepOptions {
            grad_scale: 1024.0,
            ..StepOptions::default()
        },
        StepOptions {
            grad_scale: 3.0,
            clip_value: Some(0.5),
            grad_multiplier: 0.7,
            rounding: sr,
        },
        StepOptions {
            grad_scale: 0.25,
            clip_value: Some(0.0),
            ..StepOptions::default()
        },
    ]
}

/// Compares kernel and reference for `P, G, S` (and each copy format when `copies`), over
/// `lens` at small misaligned offsets, every variant and option set, two steps.
fn check_combo<P, G, S>(kind: BackendKind, test: &str, lens: &[usize], copies: bool)
where
    P: TestStorage,
    G: TestStorage + Storage<Compute = P::Compute>,
    S: TestStorage + Storage<Compute = P::Compute>,
{
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let copy_formats: &[Option<Format>] = if copies {
        &[None, Some(Format::Bf16), Some(Format::F16)]
    } else {
        &[None]
    };
    let mut rng = Inputs(seeded(0xAB5 ^ kind as u64));
    for kernel in kernels_for(backend) {
        for (v, hp) in variants().into_iter().enumerate() {
            for (o, opts) in option_sets().into_iter().enumerate() {
                for &len in lens {
                    let copy = copy_formats[(v + o + len) % copy_formats.len()];
                    let offset = len % 3;
                    let start = Mixed::<P, G, S>::random(&mut rng, offset + len + 2);
                    let (mut got, mut want) = (start.clone(), start);
                    for s in 0..2u64 {
                        let opts = StepOptions {
                            rounding: match opts.rounding {
                                Rounding::Stochastic { seed, .. } => {
                                    Rounding::Stochastic { seed, step: s }
                                }
                                r => r,
                            },
                            ..opts
                        };
                        let r = offset..offset + len;
                        want.step(None, &hp, &opts, copy, r.clone()).unwrap();
                        got.step(Some(&kernel), &hp, &opts, copy, r).unwrap();
                        got.assert_same(&want, &|| {
                            format!(
                                "{} {:?} P={:?} G={:?} S={:?} copy={copy:?}: step {s}, len {len}, \
                                 offset {offset}, {hp:?}, {opts:?}",
                                kernel.backend(),
                                kernel.threading(),
                                P::FORMAT,
                                G::FORMAT,
                                S::FORMAT
                            )
                        });
                    }
                }
            }
        }
    }
}

/// Every special value of each buffer's type at every lane position, against every other.
fn special_grid<P, G, S>(kind: BackendKind, test: &str)
where
    P: TestStorage,
    G: TestStorage + Storage<Compute = P::Compute>,
    S: TestStorage + Storage<Compute = P::Compute>,
{
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let (ps, gs, ss) = (P::specials(), G::specials(), S::specials());
    let n = ps.len() * gs.len();
    let start = Mixed::<P, G, S> {
        params: (0..n).map(|i| ps[i % ps.len()]).collect(),
        grads: (0..n).map(|i| gs[i / ps.len()]).collect(),
        square_avg: (0..n).map(|i| ss[(i * 7 + 3) % ss.len()]).collect(),
        grad_avg: (0..n).map(|i| ss[(i * 5 + 1) % ss.len()]).collect(),
        momentum_buffer: (0..n).map(|i| ss[(i * 3 + 2) % ss.len()]).collect(),
        copy_bf16: vec![bf16::ZERO; n],
        copy_f16: vec![f16::ZERO; n],
    };
    for kernel in kernels_for(backend) {
        for hp in variants() {
            for opts in option_sets() {
                for (copy, offset) in [(None, 0), (Some(Format::Bf16), 1), (Some(Format::F16), 5)] {
                    // f64 parameters have no 16-bit copy (a typed error, tested below)
                    let copy = copy.filter(|_| P::FORMAT != Format::F64);
                    let (mut got, mut want) = (start.clone(), start.clone());
                    for lr in [0.01, 1.0] {
                        let hp = Hyperparameters { lr, ..hp };
                        want.step(None, &hp, &opts, copy, offset..n).unwrap();
                        got.step(Some(&kernel), &hp, &opts, copy, offset..n)
                            .unwrap();
                        got.assert_same(&want, &|| {
                            format!(
                                "{} grid P={:?} G={:?} S={:?} copy={copy:?} {hp:?} {opts:?}",
                                kernel.backend(),
                                P::FORMAT,
                                G::FORMAT,
                                S::FORMAT
                            )
                        });
                    }
                }
            }
        }
    }
}

/// Stochastic rounding of all-bf16 results just past `bf16::MAX`, which must round to
/// nearest-even, in vectors with no NaN or infinity (the special grid has a NaN in every vector,
/// so it never reaches the fused loop's integer fast path with such lanes).
fn sr_past_bf16_max(kind: BackendKind, test: &str) {
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let n = 256;
    let sign = |i: usize| if i.is_multiple_of(2) { 1.0f32 } else { -1.0 };
    let start = Mixed::<bf16, bf16, bf16> {
        params: (0..n)
            .map(|i| bf16::from_f32(sign(i) * bf16::MAX.to_f32()))
            .collect(),
        // Against the parameter's sign, so the step moves it outwards; `square_avg` stays
        // about 1, so the step is about `lr * |g|`.
        grads: (0..n)
            .map(|i| bf16::from_f32(-sign(i) * (0.5 + (i % 5) as f32 * 0.25)))
            .collect(),
        square_avg: vec![bf16::ONE; n],
        grad_avg: vec![bf16::ZERO; n],
        momentum_buffer: vec![bf16::ZERO; n],
        copy_bf16: vec![bf16::ZERO; n],
        copy_f16: vec![f16::ZERO; n],
    };
    let (mut maxes, mut infinities) = (0, 0);
    for kernel in kernels_for(backend) {
        // Steps of 1e35 to 1.2e36, under bf16's ulp at MAX (2^120, about 1.3e36): the f32
        // results lie between bf16::MAX and f32::MAX.
        for lr in [2e35, 5e35, 8e35] {
            for step in 0..4 {
                let hp = Hyperparameters {
                    lr,
                    ..Hyperparameters::default()
                };
                let opts = StepOptions {
                    rounding: Rounding::Stochastic { seed: 3, step },
                    ..StepOptions::default()
                };
                let (mut got, mut want) = (start.clone(), start.clone());
                want.step(None, &hp, &opts, None, 0..n).unwrap();
                got.step(Some(&kernel), &hp, &opts, None, 0..n).unwrap();
                got.assert_same(&want, &|| {
                    format!("{} lr={lr} step={step}", kernel.backend())
                });
                maxes += want
                    .params
                    .iter()
                    .filter(|p| p.to_f32().abs() == bf16::MAX.to_f32())
                    .count();
                infinities += want.params.iter().filter(|p| p.is_infinite()).count();
            }
        }
    }
    // Both outcomes occur, so the lanes did land past MAX on both sides of the midpoint.
    assert!(
        maxes > 0 && infinities > 0,
        "{maxes} at MAX, {infinities} infinite"
    );
}

fn short_lengths() -> Vec<usize> {
    if cfg!(miri) {
        vec![0, 1, 3, 33]
    } else if cfg!(debug_assertions) {
        // every tail length of every backend (vectors of 1, 4, 8, 16 f32), fewer long ones
        (0..=33).chain([63, 64, 65, 129]).collect()
    } else {
        (0..=67).chain([127, 128, 129, 1000]).collect()
    }
}

macro_rules! combos {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            macro_rules! combo {
                ($name:ident, $p:ty, $g:ty, $s:ty, $copies:expr) => {
                    #[test]
                    #[cfg_attr(miri, ignore = "too slow under miri")]
                    fn $name() {
                        check_combo::<$p, $g, $s>($kind, module_path!(), &short_lengths(), $copies);
                        special_grid::<$p, $g, $s>($kind, module_path!());
                    }
                };
            }
            #[test]
            #[cfg_attr(miri, ignore = "too slow under miri")]
            fn stochastic_rounding_past_bf16_max() {
                sr_past_bf16_max($kind, module_path!());
            }

            combo!(master_f32_grads_f32, f32, f32, f32, true);
            combo!(master_f32_grads_bf16, f32, bf16, f32, true);
            combo!(master_f32_grads_f16, f32, f16, f32, true);
            combo!(bf16_params_f32_state, bf16, bf16, f32, false);
            combo!(f16_params_f32_state, f16, f16, f32, false);
            combo!(bf16_params_bf16_state, bf16, bf16, bf16, true);
            combo!(f16_params_f16_state, f16, f16, f16, false);
            combo!(f32_params_bf16_state, f32, f32, bf16, false);
            combo!(f64_with_options, f64, f64, f64, false);
        }
    };
}

combos!(scalar, BackendKind::Scalar);
#[cfg(target_arch = "x86_64")]
combos!(avx2, BackendKind::Avx2Fma);
#[cfg(target_arch = "x86_64")]
combos!(avx512, BackendKind::Avx512);
#[cfg(target_arch = "aarch64")]
combos!(neon, BackendKind::Neon);

impl TestStorage for f64 {
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    fn bits(self) -> u64 {
        self.to_bits()
    }
    fn nan(self) -> bool {
        self.is_nan()
    }
    fn from_random_bits(r: u64) -> Self {
        f64::from_bits(r)
    }
    fn specials() -> Vec<Self> {
        f32::specials().into_iter().map(|x| x as f64).collect()
    }
}

/// `Kernel::step_many_with` (a `std` API): a model of tensors in mixed storage in one call.
#[cfg(feature = "std")]
mod many {
    use super::*;
    use rmsprop_simd::TensorStepWith;

    impl<P: TestStorage, G: TestStorage, S: TestStorage> Mixed<P, G, S>
    where
        G: Storage<Compute = P::Compute>,
        S: Storage<Compute = P::Compute>,
    {
        /// The whole buffers as tensor `index` of `Kernel::step_many_with`.
        fn tensor<'a>(
            &'a mut self,
            index: usize,
            hp: &'a Hyperparameters,
            copy: Option<Format>,
        ) -> TensorStepWith<'a> {
            let (centered, momentum) = hp.uses_state();
            TensorStepWith {
                index,
                hyperparameters: hp,
                params: (&mut self.params).into(),
                grads: (&self.grads).into(),
                square_avg: (&mut self.square_avg).into(),
                grad_avg: centered.then(|| (&mut self.grad_avg).into()),
                momentum_buffer: momentum.then(|| (&mut self.momentum_buffer).into()),
                params_copy: match copy {
                    Some(Format::Bf16) => Some(ParamsCopy::from(&mut self.copy_bf16[..])),
                    Some(Format::F16) => Some(ParamsCopy::from(&mut self.copy_f16[..])),
                    _ => None,
                },
            }
        }
    }

    /// A model of tensors in six storage combinations (f64 among them), stepped by one
    /// `Kernel::step_many_with` call, equals the reference on each tensor with the documented seed
    /// `seed ^ index * 0x9E3779B97F4A7C15`: every backend, serial and parallel (the long tensor cut
    /// into tasks, the short ones batched), every option set, every fifth variant, two steps.
    fn many_equals_reference(kind: BackendKind, test: &str) {
        let Some(backend) = backend_or_skip(kind, test) else {
            return;
        };
        let indices = [0, 3, 4, 8, 9, 11];
        let long = if cfg!(miri) {
            40
        } else if cfg!(debug_assertions) {
            3_000
        } else {
            20_000
        };
        let mut rng = Inputs(seeded(0x3A7 ^ kind as u64));
        for kernel in kernels_for(backend) {
            for hp in variants().into_iter().step_by(5) {
                for opts in option_sets() {
                    let mut a = Mixed::<f32, bf16, f32>::random(&mut rng, long);
                    let mut b = Mixed::<bf16, bf16, bf16>::random(&mut rng, 5);
                    let mut c = Mixed::<f16, f16, f32>::random(&mut rng, 0);
                    let mut d = Mixed::<f32, f32, f32>::random(&mut rng, 1_003);
                    let mut e = Mixed::<f64, f64, f64>::random(&mut rng, 17);
                    let mut f = Mixed::<f32, f16, bf16>::random(&mut rng, 250);
                    let copies = [
                        Some(Format::Bf16),
                        None,
                        None,
                        None,
                        None,
                        Some(Format::F16),
                    ];
                    let (mut wa, mut wb, mut wc) = (a.clone(), b.clone(), c.clone());
                    let (mut wd, mut we, mut wf) = (d.clone(), e.clone(), f.clone());
                    for s in 0..2u64 {
                        let opts = StepOptions {
                            rounding: match opts.rounding {
                                Rounding::Stochastic { seed, .. } => {
                                    Rounding::Stochastic { seed, step: s }
                                }
                                r => r,
                            },
                            ..opts
                        };
                        kernel
                            .step_many_with(
                                &opts,
                                vec![
                                    a.tensor(indices[0], &hp, copies[0]),
                                    b.tensor(indices[1], &hp, copies[1]),
                                    c.tensor(indices[2], &hp, copies[2]),
                                    d.tensor(indices[3], &hp, copies[3]),
                                    e.tensor(indices[4], &hp, copies[4]),
                                    f.tensor(indices[5], &hp, copies[5]),
                                ],
                            )
                            .unwrap();
                        // The reference, tensor by tensor, with each tensor's own seed.
                        let own = |t: usize| StepOptions {
                            rounding: match opts.rounding {
                                Rounding::Stochastic { seed, step } => Rounding::Stochastic {
                                    seed: seed
                                        ^ (indices[t] as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                                    step,
                                },
                                r => r,
                            },
                            ..opts
                        };
                        wa.step(None, &hp, &own(0), copies[0], 0..long).unwrap();
                        wb.step(None, &hp, &own(1), copies[1], 0..5).unwrap();
                        wc.step(None, &hp, &own(2), copies[2], 0..0).unwrap();
                        wd.step(None, &hp, &own(3), copies[3], 0..1_003).unwrap();
                        we.step(None, &hp, &own(4), copies[4], 0..17).unwrap();
                        wf.step(None, &hp, &own(5), copies[5], 0..250).unwrap();
                        let what = |t: usize| {
                            move || {
                                format!(
                                    "{} {:?}: tensor {t}, step {s}, {hp:?}, {opts:?}",
                                    kernel.backend(),
                                    kernel.threading()
                                )
                            }
                        };
                        a.assert_same(&wa, &what(0));
                        b.assert_same(&wb, &what(1));
                        c.assert_same(&wc, &what(2));
                        d.assert_same(&wd, &what(3));
                        e.assert_same(&we, &what(4));
                        f.assert_same(&wf, &what(5));
                    }
                }
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "too slow under miri")]
    fn step_many_with_equals_reference_scalar() {
        many_equals_reference(
            BackendKind::Scalar,
            "step_many_with_equals_reference_scalar",
        );
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[cfg_attr(miri, ignore = "too slow under miri")]
    fn step_many_with_equals_reference_avx2() {
        many_equals_reference(BackendKind::Avx2Fma, "step_many_with_equals_reference_avx2");
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    #[cfg_attr(miri, ignore = "too slow under miri")]
    fn step_many_with_equals_reference_avx512() {
        many_equals_reference(
            BackendKind::Avx512,
            "step_many_with_equals_reference_avx512",
        );
    }

    #[test]
    #[cfg(target_arch = "aarch64")]
    fn step_many_with_equals_reference_neon() {
        many_equals_reference(BackendKind::Neon, "step_many_with_equals_reference_neon");
    }

    /// `step_many_with` checks every tensor before writing any: a bad tensor last leaves the first
    /// unwritten, and the error names the bad tensor by its index.
    #[test]
    fn step_many_with_refuses_before_writing() {
        let hp = Hyperparameters::default();
        let centered = Hyperparameters {
            centered: true,
            ..hp
        };
        let good = StepOptions::default();
        for case in 0..6 {
            let mut w = vec![1.0f32; 8];
            let gw = vec![bf16::ONE; 8];
            let mut vw = vec![0.5f32; 8];
            let mut copy = vec![bf16::ZERO; 8];
            // the bad tensor's buffers
            let (mut p32, g32, mut v32) = (vec![1.0f32; 8], vec![1.0f32; 8], vec![0.5f32; 8]);
            let (mut p64, g64, mut v64) = (vec![1.0f64; 8], vec![1.0f64; 8], vec![0.5f64; 8]);
            let (mut a16, mut c16) = (vec![bf16::ZERO; 8], vec![bf16::ZERO; 8]);
            let mut opts = good;
            let bad = match case {
                // state buffers of two storage types
                0 => TensorStepWith {
                    index: 7,
                    hyperparameters: &centered,
                    params: (&mut p32).into(),
                    grads: (&g32).into(),
                    square_avg: (&mut v32).into(),
                    grad_avg: Some((&mut a16).into()),
                    momentum_buffer: None,
                    params_copy: None,
                },
                // f64 parameters with f32 gradients
                1 => TensorStepWith {
                    index: 7,
                    hyperparameters: &hp,
                    params: (&mut p64).into(),
                    grads: (&g32).into(),
                    square_avg: (&mut v64).into(),
                    grad_avg: None,
                    momentum_buffer: None,
                    params_copy: None,
                },
                // gradients of another length
                2 => TensorStepWith {
                    index: 7,
                    hyperparameters: &hp,
                    params: (&mut p32).into(),
                    grads: (&g32[..7]).into(),
                    square_avg: (&mut v32).into(),
                    grad_avg: None,
                    momentum_buffer: None,
                    params_copy: None,
                },
                // a copy of f64 parameters
                3 => TensorStepWith {
                    index: 7,
                    hyperparameters: &hp,
                    params: (&mut p64).into(),
                    grads: (&g64).into(),
                    square_avg: (&mut v64).into(),
                    grad_avg: None,
                    momentum_buffer: None,
                    params_copy: Some(ParamsCopy::from(&mut c16[..])),
                },
                // centered without grad_avg
                4 => TensorStepWith {
                    index: 7,
                    hyperparameters: &centered,
                    params: (&mut p32).into(),
                    grads: (&g32).into(),
                    square_avg: (&mut v32).into(),
                    grad_avg: None,
                    momentum_buffer: None,
                    params_copy: None,
                },
                // invalid options: every tensor's error, so the first tensor's
                _ => {
                    opts.grad_scale = 0.0;
                    TensorStepWith {
                        index: 7,
                        hyperparameters: &hp,
                        params: (&mut p32).into(),
                        grads: (&g32).into(),
                        square_avg: (&mut v32).into(),
                        grad_avg: None,
                        momentum_buffer: None,
                        params_copy: None,
                    }
                }
            };
            let first = TensorStepWith {
                index: 2,
                hyperparameters: &hp,
                params: (&mut w).into(),
                grads: (&gw).into(),
                square_avg: (&mut vw).into(),
                grad_avg: None,
                momentum_buffer: None,
                params_copy: Some(ParamsCopy::from(&mut copy[..])),
            };
            let err = Kernel::new()
                .step_many_with(&opts, vec![first, bad])
                .unwrap_err();
            let (tensor, ok) = match case {
                0 | 1 | 3 => (7, matches!(err.error, Error::Unsupported { .. })),
                2 => (7, matches!(err.error, Error::LengthMismatch { .. })),
                4 => (7, matches!(err.error, Error::MissingState { .. })),
                _ => (2, matches!(err.error, Error::InvalidHyperparameter { .. })),
            };
            assert!(ok && err.tensor == tensor, "case {case}: {err}");
            assert!(
                err.to_string().starts_with(&format!("tensor {tensor}: ")),
                "{err}"
            );
            assert_eq!(w, vec![1.0f32; 8], "case {case}");
            assert_eq!(vw, vec![0.5f32; 8], "case {case}");
            assert_eq!(copy, vec![bf16::ZERO; 8], "case {case}");
            assert_eq!(
                (p32, v32, a16),
                (vec![1.0f32; 8], vec![0.5f32; 8], vec![bf16::ZERO; 8])
            );
            assert_eq!((p64, v64), (vec![1.0f64; 8], vec![0.5f64; 8]));
        }
        // The same tensors, valid, do step.
        let (mut w, g, mut v) = (vec![1.0f32; 8], vec![bf16::ONE; 8], vec![0.5f32; 8]);
        let t = TensorStepWith {
            index: 0,
            hyperparameters: &hp,
            params: (&mut w).into(),
            grads: (&g).into(),
            square_avg: (&mut v).into(),
            grad_avg: None,
            momentum_buffer: None,
            params_copy: None,
        };
        Kernel::new().step_many_with(&good, vec![t]).unwrap();
        assert!(w[0] < 1.0);
    }
}

/// Under miri: one short mixed case per backend (the SIMD paths' bounds and casts).
#[test]
fn mixed_small_under_any_interpreter() {
    for kind in [
        BackendKind::Scalar,
        BackendKind::Avx2Fma,
        BackendKind::Avx512,
    ] {
        if rmsprop_simd::Backend::from_kind(kind).is_none() {
            continue;
        }
        let mut rng = Inputs(seeded(3));
        let hp = Hyperparameters {
            momentum: 0.9,
            centered: true,
            ..Default::default()
        };
        let kernel = Kernel::new()
            .with_backend(rmsprop_simd::Backend::from_kind(kind).unwrap())
            .with_threading(rmsprop_simd::Threading::Serial);
        for len in [0, 1, 31, 70] {
            let start = Mixed::<bf16, bf16, f32>::random(&mut rng, len);
            let (mut got, mut want) = (start.clone(), start);
            let opts = option_sets()[3];
            want.step(None, &hp, &opts, None, 0..len).unwrap();
            got.step(Some(&kernel), &hp, &opts, None, 0..len).unwrap();
            got.assert_same(&want, &|| format!("{kind:?} len {len}"));
        }
    }
}

/// The kernel's nearest-even conversions equal `half`'s (IEEE conversion; for NaN: NaN) over a
/// sweep of f32 bit patterns: with `lr = 0` a step leaves the f32 parameters as they are, so the
/// copy is the conversion of each pattern.
#[test]
#[cfg_attr(miri, ignore = "too slow under miri")]
fn nearest_even_conversions_equal_half() {
    let stride = if cfg!(debug_assertions) { 4099 } else { 257 };
    let mut patterns: Vec<u32> = (0..=u32::MAX / stride).map(|i| i * stride).collect();
    // Every pattern around the rounding boundaries of both formats.
    for base in [
        0x7F7F_0000u32,
        0x7F7F_8000,
        0x7F80_0000,
        0x477F_E000,
        0x477F_F000,
        0x3880_0000,
        0x3300_0000,
        0x3380_0000,
        0x0080_0000,
    ] {
        for d in 0..4096u32 {
            patterns.push(base.wrapping_add(d));
            patterns.push(base.wrapping_sub(d));
        }
    }
    patterns.extend(patterns.clone().iter().map(|b| b | 0x8000_0000));
    let params0: Vec<f32> = patterns.iter().map(|&b| f32::from_bits(b)).collect();
    let n = params0.len();
    let grads = vec![1.0f32; n];
    let hp = Hyperparameters {
        lr: 0.0,
        ..Default::default()
    };
    for kind in [
        BackendKind::Scalar,
        BackendKind::Avx2Fma,
        BackendKind::Avx512,
        BackendKind::Neon,
    ] {
        let Some(backend) = backend_or_skip(kind, "nearest_even_conversions_equal_half") else {
            continue;
        };
        let kernel = Kernel::new().with_backend(backend);
        for format in [Format::Bf16, Format::F16] {
            let mut p = params0.clone();
            let mut v = vec![0.0f32; n];
            let mut cb = vec![bf16::ZERO; n];
            let mut cf = vec![f16::ZERO; n];
            let copy = match format {
                Format::Bf16 => ParamsCopy::from(&mut cb[..]),
                _ => ParamsCopy::from(&mut cf[..]),
            };
            kernel
                .step_with(
                    &hp,
                    &StepOptions::default(),
                    &mut p,
                    &grads,
                    State::new(&mut v),
                    Some(copy),
                )
                .unwrap();
            for i in 0..n {
                let x = params0[i];
                assert!(
                    p[i].to_bits() == x.to_bits() || x.is_nan(),
                    "lr = 0 changed {x:?}"
                );
                let (got, want, nan) = match format {
                    Format::Bf16 => (
                        cb[i].to_bits(),
                        bf16::from_f32(x).to_bits(),
                        bf16::from_f32(x).is_nan(),
                    ),
                    _ => (
                        cf[i].to_bits(),
                        f16::from_f32(x).to_bits(),
                        f16::from_f32(x).is_nan(),
                    ),
                };
                if nan {
                    assert!(x.is_nan());
                    let got_nan = match format {
                        Format::Bf16 => bf16::from_bits(got).is_nan(),
                        _ => f16::from_bits(got).is_nan(),
                    };
                    assert!(
                        got_nan,
                        "{kind:?} {format:?}: NaN {:#x} became {got:#x}",
                        x.to_bits()
                    );
                } else {
                    assert_eq!(
                        got,
                        want,
                        "{kind:?} {format:?}: {x:?} ({:#x}) gave {got:#x}, IEEE {want:#x}",
                        x.to_bits()
                    );
                }
            }
        }
    }
}

/// The scalar stochastic rounding always gives one of the two neighbours of `x` (the one towards
/// zero or the next away from it), leaves representable values alone, and keeps NaN, Inf and the
/// values past the largest finite number as nearest-even rounds them.
#[test]
fn stochastic_rounding_picks_a_neighbour() {
    let mut rng = seeded(11);
    let stride = if cfg!(miri) { 1 << 24 } else { 65_537 };
    for i in 0..=(u32::MAX / stride) {
        let bits = i * stride;
        let x = f32::from_bits(bits);
        for _ in 0..4 {
            let r = rng.next_u64() as u32;
            // bf16
            let s = bf16_stochastic(x, r);
            let t = bf16::from_bits((bits >> 16) as u16); // towards zero
            let a = bf16::from_bits(t.to_bits().wrapping_add(1)); // away
            if x.is_nan() {
                assert!(s.is_nan());
            } else if x.abs() > bf16::MAX.to_f32() {
                assert_eq!(s, bf16::from_f32(x));
            } else {
                assert!(
                    s.to_bits() == t.to_bits() || s.to_bits() == a.to_bits(),
                    "{x:?}"
                );
                if bits & 0xFFFF == 0 {
                    assert_eq!(s.to_bits(), t.to_bits());
                }
            }
            // f16
            let s = f16_stochastic(x, r);
            if x.is_nan() {
                assert!(s.is_nan());
            } else if x.abs() > 65504.0 {
                assert_eq!(s, f16::from_f32(x));
            } else {
                let lo = f16_towards_zero(x);
                let hi = f16::from_bits(lo.to_bits() + 1);
                assert!(
                    s == lo || s == hi || (x == 0.0 && s.to_f32() == 0.0),
                    "{x:?}: {s:?}"
                );
                if lo.to_f32() == x {
                    assert_eq!(s.to_bits(), lo.to_bits(), "{x:?} is exact");
                }
            }
        }
    }
}

/// f16 truncation towards zero (for the neighbour check): the largest-magnitude f16 whose
/// magnitude is at most `|x|`, with `x`'s sign.
fn f16_towards_zero(x: f32) -> f16 {
    let r = f16::from_f32(x);
    if r.to_f32().abs() > x.abs() {
        f16::from_bits(r.to_bits() - 1)
    } else {
        r
    }
}

/// Unbiasedness: for values across the range of each format (normal, f16 subnormal, tiny,
/// near the largest finite), the mean of SR(x) over `N` seeds equals `x` within 5 standard
/// errors: `|mean - x| <= 5 * ulp * sqrt(p (1 - p) / N) + ulp / 2^13` (the last term: f16 resolves
/// at most 2^-13 of an ulp in its normal range, bf16 2^-16). The bound fails for a rounding that
/// is nearest-even or truncation (checked too).
#[test]
fn stochastic_rounding_is_unbiased() {
    let n: u64 = if cfg!(miri) { 200 } else { 20_000 };
    let mut rng = seeded(5);
    let mut values: Vec<f32> = vec![
        1.0 + f32::EPSILON,
        1.0 + 3.0 * f32::EPSILON,
        1.0 / 3.0,
        -2.0 / 3.0,
        1e-3,
        1234.567,
        3e-6,      // f16 subnormal
        -1.1e-7,   // f16 subnormal
        1.5e-8,    // below half the smallest f16 subnormal
        65000.125, // near the f16 maximum
        3.0e38,    // near the bf16 maximum
        1e-39,     // an f32 subnormal
    ];
    for _ in 0..20 {
        let e = (rng.next_u64() % 40) as i32 - 30;
        values.push((1.0 + (rng.next_u64() % 1000) as f32 / 997.0) * 2f32.powi(e));
    }
    for &x in &values {
        for format in [Format::Bf16, Format::F16] {
            let round = |r: u32| -> f64 {
                match format {
                    Format::Bf16 => bf16_stochastic(x, r).to_f64(),
                    _ => f16_stochastic(x, r).to_f64(),
                }
            };
            if format == Format::F16 && x.abs() > 65504.0 || !round(0).is_finite() {
                continue;
            }
            let lo = round(0); // no random bits: towards zero
                               // the next value away from zero
            let hi = match format {
                Format::Bf16 => bf16::from_bits(bf16_stochastic(x, 0).to_bits() + 1).to_f64(),
                _ => f16::from_bits(f16_stochastic(x, 0).to_bits() + 1).to_f64(),
            };
            let ulp = (hi - lo).abs();
            let mean = (0..n)
                .map(|seed| round(random_bits(seed, 1, Buffer16::Params, 12345)))
                .sum::<f64>()
                / n as f64;
            let x64 = x as f64;
            if ulp == 0.0 {
                assert_eq!(mean, x64);
                continue;
            }
            let p = ((x64 - lo) / (hi - lo)).clamp(0.0, 1.0);
            let resolution = ulp
                / if format == Format::F16 {
                    8192.0
                } else {
                    65536.0
                };
            let bound = 5.0 * ulp * (p * (1.0 - p) / n as f64).sqrt() + resolution;
            assert!(
                (mean - x64).abs() <= bound,
                "{format:?}: x = {x:e}, mean of {n} = {mean:e}, |diff| = {:e} > {bound:e}",
                (mean - x64).abs()
            );
            // The test has power: nearest-even and truncation are far off whenever x is
            // not near a grid point or a midpoint.
            if p > 0.05 && p < 0.45 {
                let rne = match format {
                    Format::Bf16 => bf16::from_f32(x).to_f64(),
                    _ => f16::from_f32(x).to_f64(),
                };
                assert!(
                    (rne - x64).abs() > bound,
                    "{format:?} {x:e}: the bound is too loose"
                );
            }
        }
    }
}

/// Bad options are typed errors and nothing is written.
#[test]
fn bad_options_are_refused_before_writing() {
    let hp = Hyperparameters::default();
    let bad = [
        StepOptions {
            grad_scale: 0.0,
            ..StepOptions::default()
        },
        StepOptions {
            grad_scale: f64::NAN,
            ..StepOptions::default()
        },
        StepOptions {
            grad_scale: 1e300, // overflows f32
            ..StepOptions::default()
        },
        StepOptions {
            clip_value: Some(-1.0),
            ..StepOptions::default()
        },
        StepOptions {
            grad_multiplier: f64::INFINITY,
            ..StepOptions::default()
        },
    ];
    for opts in bad {
        let mut p = vec![bf16::ONE; 8];
        let g = vec![bf16::ONE; 8];
        let mut v = vec![0.5f32; 8];
        let err = Kernel::new()
            .step_with(&hp, &opts, &mut p, &g, State::new(&mut v), None)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidHyperparameter { .. }), "{err}");
        assert_eq!(p, vec![bf16::ONE; 8]);
        assert_eq!(v, vec![0.5f32; 8]);
    }
    // A copy of the wrong length; a copy of f64 parameters.
    let mut p = vec![1.0f32; 8];
    let mut v = vec![0.0f32; 8];
    let mut c = [bf16::ZERO; 7];
    let err = Kernel::new()
        .step_with(
            &hp,
            &StepOptions::default(),
            &mut p,
            &[1.0f32; 8],
            State::new(&mut v),
            Some(ParamsCopy::from(&mut c[..])),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        Error::LengthMismatch {
            buffer: rmsprop_simd::Buffer::ParamsCopy,
            ..
        }
    ));
    assert_eq!(p, vec![1.0f32; 8]);
    let mut p = vec![1.0f64; 8];
    let mut v = vec![0.0f64; 8];
    let mut c = vec![bf16::ZERO; 8];
    let err = Kernel::new()
        .step_with(
            &hp,
            &StepOptions::default(),
            &mut p,
            &[1.0f64; 8],
            State::new(&mut v),
            Some(ParamsCopy::from(&mut c[..])),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(c, vec![bf16::ZERO; 8]);
}

/// Stochastic rounding depends on (seed, step, index) only: a long buffer stepped serially, in
/// parallel with many chunks, and as two separate halves with ... the same result.
#[test]
#[cfg_attr(miri, ignore = "too slow under miri")]
fn stochastic_rounding_does_not_depend_on_threads() {
    let n = 100_003;
    let mut rng = Inputs(seeded(17));
    let start = Mixed::<bf16, bf16, bf16>::random(&mut rng, n);
    let hp = Hyperparameters {
        lr: 1e-4,
        momentum: 0.9,
        ..Default::default()
    };
    let opts = StepOptions {
        rounding: Rounding::Stochastic { seed: 9, step: 2 },
        ..StepOptions::default()
    };
    let mut results = Vec::new();
    for kernel in [
        Kernel::new().with_threading(rmsprop_simd::Threading::Serial),
        Kernel::new().with_parallel_min_len(128),
    ] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut m = start.clone();
        pool.install(|| m.step(Some(&kernel), &hp, &opts, Some(Format::F16), 0..n))
            .unwrap();
        results.push(m);
    }
    results[0].assert_same(&results[1], &|| "serial vs parallel".into());
    // It does round stochastically: another seed changes some parameters.
    let mut other = start.clone();
    let opts2 = StepOptions {
        rounding: Rounding::Stochastic { seed: 10, step: 2 },
        ..opts
    };
    other.step(None, &hp, &opts2, None, 0..n).unwrap();
    let differ = (0..n)
        .filter(|&i| other.params[i].to_bits() != results[0].params[i].to_bits())
        .count();
    assert!(
        differ > n / 100,
        "only {differ} of {n} parameters depend on the seed"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 64 }, ..ProptestConfig::default() })]

    /// Random lengths, offsets, variants, options and bits: best backend and scalar, serial and
    /// parallel, against the reference.
    #[test]
    fn kernel_equals_reference_for_random_inputs(
        seed in any::<u64>(),
        len in 0usize..300,
        offset in 0usize..5,
        variant in 0usize..56,
        option in 0usize..5,
        copy in 0usize..3,
        combo in 0usize..3,
    ) {
        let hp = variants()[variant];
        let opts = option_sets()[option];
        let copy = [None, Some(Format::Bf16), Some(Format::F16)][copy];
        let mut rng = Inputs(seeded(seed));
        for kernel in [Kernel::new().with_parallel_min_len(128), Kernel::new().with_backend(rmsprop_simd::Backend::scalar())] {
            let r = offset..offset + len;
            match combo {
                0 => {
                    let start = Mixed::<f32, bf16, f32>::random(&mut rng, offset + len);
                    let (mut got, mut want) = (start.clone(), start);
                    want.step(None, &hp, &opts, copy, r.clone()).unwrap();
                    got.step(Some(&kernel), &hp, &opts, copy, r).unwrap();
                    got.assert_same(&want, &|| format!("{hp:?} {opts:?}"));
                }
                1 => {
                    let start = Mixed::<bf16, bf16, bf16>::random(&mut rng, offset + len);
                    let (mut got, mut want) = (start.clone(), start);
                    want.step(None, &hp, &opts, copy, r.clone()).unwrap();
                    got.step(Some(&kernel), &hp, &opts, copy, r).unwrap();
                    got.assert_same(&want, &|| format!("{hp:?} {opts:?}"));
                }
                _ => {
                    let start = Mixed::<f16, f16, f32>::random(&mut rng, offset + len);
                    let (mut got, mut want) = (start.clone(), start);
                    want.step(None, &hp, &opts, copy, r.clone()).unwrap();
                    got.step(Some(&kernel), &hp, &opts, copy, r).unwrap();
                    got.assert_same(&want, &|| format!("{hp:?} {opts:?}"));
                }
            }
        }
    }
}

/// Passes with 16-bit storage run on `Backend::detect_mixed` (AVX-512 first) unless a backend
/// was chosen for every pass; the f32 kernel keeps `Backend::detect`.
#[test]
fn sixteen_bit_passes_prefer_the_widest_backend() {
    use rmsprop_simd::Backend;
    let kernel = Kernel::new();
    assert_eq!(kernel.backend(), Backend::detect());
    assert_eq!(kernel.mixed_backend(), Backend::detect_mixed());
    if let Some(v4) = Backend::avx512() {
        assert_eq!(Backend::detect_mixed(), v4);
    }
    let scalar = Kernel::new().with_backend(Backend::scalar());
    assert_eq!(scalar.mixed_backend(), Backend::scalar());
}

/// The all-bf16 loops and the master weights' bf16 copy on AVX-512 with the integer rounding, on
/// a CPU whose AVX512-BF16 conversion instruction the `avx512` combos above use (both give the
/// same bits). The switch
/// is global: a test running meanwhile takes the integer path too, with the same results.
#[test]
#[cfg(target_arch = "x86_64")]
#[cfg_attr(miri, ignore = "too slow under miri")]
fn bf16_rounding_on_avx512_without_the_conversion_instruction() {
    use rmsprop_simd::__testing::{bf16_instruction, set_bf16_instruction};
    if !bf16_instruction() {
        eprintln!(
            "NOTE: this CPU has no AVX512-BF16 (or no AVX-512): the conversion instruction's \
             path is NOT TESTED here; the integer rounding runs in the combos"
        );
    }
    set_bf16_instruction(false);
    check_combo::<bf16, bf16, bf16>(BackendKind::Avx512, "no_cvt", &short_lengths(), true);
    special_grid::<bf16, bf16, bf16>(BackendKind::Avx512, "no_cvt");
    // The bf16 params copy of master weights.
    check_combo::<f32, bf16, f32>(BackendKind::Avx512, "no_cvt", &short_lengths(), true);
    special_grid::<f32, bf16, f32>(BackendKind::Avx512, "no_cvt");
    set_bf16_instruction(true);
}
