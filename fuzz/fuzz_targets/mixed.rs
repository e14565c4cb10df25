//! Differential fuzzing of mixed precision: every available backend, serial and parallel, against
//! `reference::step_with`, bit for bit (NaN where the reference has NaN), over storage
//! combinations (f32 master weights with bf16/f16/f32 gradients and a 16-bit copy; bf16/f16
//! parameters with f32 or 16-bit state), raw bit patterns, arbitrary options (grad_scale,
//! clip_value, grad_multiplier, valid or not), nearest-even and stochastic rounding, and the
//! three semantics. Invalid input must give the same error everywhere and change nothing.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rmsprop_simd::{
    bf16, f16, reference, Backend, Hyperparameters, Kernel, OptaxOptions, ParamsCopy, Rounding,
    Semantics, State, StepOptions, Storage, Threading,
};

#[derive(Arbitrary, Debug)]
struct Input {
    combo: u8,
    semantics: u8,
    centered: bool,
    momentum: bool,
    weight_decay: bool,
    lr: u16,
    grad_scale: f64,
    pow2_scale: u8,
    clip_value: Option<f64>,
    grad_multiplier: Option<u16>,
    stochastic: Option<(u64, u64)>,
    copy: u8,
    offset: u8,
    bits: Vec<u64>,
}

trait Raw: Storage {
    fn raw(bits: u64) -> Self;
    fn bits(self) -> u64;
    fn nan(self) -> bool;
}
impl Raw for f32 {
    fn raw(b: u64) -> Self {
        f32::from_bits(b as u32)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn nan(self) -> bool {
        self.is_nan()
    }
}
impl Raw for bf16 {
    fn raw(b: u64) -> Self {
        bf16::from_bits(b as u16)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn nan(self) -> bool {
        self.is_nan()
    }
}
impl Raw for f16 {
    fn raw(b: u64) -> Self {
        f16::from_bits(b as u16)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
    fn nan(self) -> bool {
        self.is_nan()
    }
}

fn same<T: Raw>(a: &[T], b: &[T]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x.bits() == y.bits() || (x.nan() && y.nan()))
}

#[derive(Clone)]
struct Bufs<P, G, S> {
    p: Vec<P>,
    g: Vec<G>,
    v: Vec<S>,
    a: Vec<S>,
    m: Vec<S>,
    cb: Vec<bf16>,
    cf: Vec<f16>,
}

fn run<P: Raw, G: Raw + Storage<Compute = P::Compute>, S: Raw + Storage<Compute = P::Compute>>(
    input: &Input,
    hp: &Hyperparameters,
    opts: &StepOptions,
) {
    let n = input.bits.len() / 5;
    let at = |j: usize| input.bits.iter().skip(j).step_by(5).take(n).copied();
    let start = Bufs::<P, G, S> {
        p: at(0).map(P::raw).collect(),
        g: at(1).map(G::raw).collect(),
        v: at(2).map(S::raw).collect(),
        a: at(3).map(S::raw).collect(),
        m: at(4).map(S::raw).collect(),
        cb: vec![bf16::ZERO; n],
        cf: vec![f16::ZERO; n],
    };
    let offset = (input.offset as usize).min(n);
    let copy = input.copy % 3;
    let step = |b: &mut Bufs<P, G, S>, kernel: Option<&Kernel>| {
        let r = offset..n;
        let (c, mo) = hp.uses_state();
        let mut st = State::new(&mut b.v[r.clone()]);
        if c {
            st = st.with_grad_avg(&mut b.a[r.clone()]);
        }
        if mo {
            st = st.with_momentum_buffer(&mut b.m[r.clone()]);
        }
        let cp = match copy {
            1 => Some(ParamsCopy::from(&mut b.cb[r.clone()])),
            2 => Some(ParamsCopy::from(&mut b.cf[r.clone()])),
            _ => None,
        };
        let (p, g) = (&mut b.p[r.clone()], &b.g[r]);
        match kernel {
            Some(k) => k.step_with(hp, opts, p, g, st, cp),
            None => reference::step_with(hp, opts, p, g, st, cp),
        }
    };
    let mut want = start.clone();
    let expected = step(&mut want, None);
    for backend in Backend::available() {
        for kernel in [
            Kernel::new()
                .with_backend(backend)
                .with_threading(Threading::Serial),
            Kernel::new()
                .with_backend(backend)
                .with_parallel_min_len(128),
        ] {
            let mut got = start.clone();
            let result = step(&mut got, Some(&kernel));
            assert_eq!(format!("{result:?}"), format!("{expected:?}"), "{backend}");
            let w = if expected.is_ok() { &want } else { &start };
            assert!(same(&got.p, &w.p), "{backend}: params");
            assert!(same(&got.v, &w.v), "{backend}: square_avg");
            assert!(same(&got.a, &w.a), "{backend}: grad_avg");
            assert!(same(&got.m, &w.m), "{backend}: momentum_buffer");
            assert!(
                same(&got.cb, &w.cb) && same(&got.cf, &w.cf),
                "{backend}: copy"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let momentum = if input.momentum { 0.9 } else { 0.0 };
    let hp = match input.semantics % 3 {
        0 => Hyperparameters {
            lr: input.lr as f64 / 4096.0,
            centered: input.centered,
            momentum,
            weight_decay: if input.weight_decay { 0.01 } else { 0.0 },
            ..Default::default()
        },
        1 => Hyperparameters {
            centered: input.centered,
            momentum,
            step: 2,
            semantics: Semantics::Optax(OptaxOptions {
                bias_correction: input.weight_decay,
                ..Default::default()
            }),
            ..Hyperparameters::optax(input.lr as f64 / 4096.0)
        },
        _ => Hyperparameters {
            lr: input.lr as f64 / 4096.0,
            centered: input.centered,
            momentum,
            ..Hyperparameters::keras()
        },
    };
    let opts = StepOptions {
        grad_scale: if input.pow2_scale % 2 == 0 {
            2f64.powi(input.pow2_scale as i32 / 2 - 32)
        } else {
            input.grad_scale
        },
        clip_value: input.clip_value,
        grad_multiplier: input.grad_multiplier.map_or(1.0, |m| m as f64 / 1000.0),
        rounding: match input.stochastic {
            Some((seed, step)) => Rounding::Stochastic { seed, step },
            None => Rounding::NearestEven,
        },
    };
    match input.combo % 6 {
        0 => run::<f32, bf16, f32>(&input, &hp, &opts),
        1 => run::<f32, f16, f32>(&input, &hp, &opts),
        2 => run::<f32, f32, f32>(&input, &hp, &opts),
        3 => run::<bf16, bf16, f32>(&input, &hp, &opts),
        4 => run::<bf16, bf16, bf16>(&input, &hp, &opts),
        _ => run::<f16, f16, f32>(&input, &hp, &opts),
    }
});
