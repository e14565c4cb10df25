//! Read-only passes over the gradients of a whole step, before it: the finite check that decides
//! whether a loss-scaled step is skipped (as `GradScaler` does), and the global norm of
//! `torch.nn.utils.clip_grad_norm_`. Both run over every tensor at once, in parallel for large
//! steps, and give the same answer for any thread count.

use crate::storage::{bf16, f16, Format, Storage};
use crate::{Error, Kernel};

/// A gradient buffer of any storage type, for [`Kernel::grads_are_finite`] and
/// [`Kernel::grad_norm`] (from `&[f32]`, `&[f64]`, `&[bf16]`, `&[f16]` with `.into()`).
#[derive(Clone, Copy, Debug)]
pub enum GradSlice<'a> {
    /// `f32` gradients.
    F32(&'a [f32]),
    /// `f64` gradients.
    F64(&'a [f64]),
    /// bf16 gradients.
    Bf16(&'a [bf16]),
    /// f16 gradients.
    F16(&'a [f16]),
}

impl<'a, T: Storage> From<&'a [T]> for GradSlice<'a> {
    fn from(s: &'a [T]) -> Self {
        match T::FORMAT {
            Format::F32 => GradSlice::F32(bytemuck::cast_slice(s)),
            Format::F64 => GradSlice::F64(bytemuck::cast_slice(s)),
            Format::Bf16 => GradSlice::Bf16(bytemuck::cast_slice(s)),
            Format::F16 => GradSlice::F16(bytemuck::cast_slice(s)),
        }
    }
}

#[cfg(feature = "std")]
impl<'a, T: Storage> From<&'a Vec<T>> for GradSlice<'a> {
    fn from(s: &'a Vec<T>) -> Self {
        GradSlice::from(&s[..])
    }
}

impl GradSlice<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            GradSlice::F32(s) => s.len(),
            GradSlice::F64(s) => s.len(),
            GradSlice::Bf16(s) => s.len(),
            GradSlice::F16(s) => s.len(),
        }
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage format.
    pub fn format(&self) -> Format {
        match self {
            GradSlice::F32(_) => Format::F32,
            GradSlice::F64(_) => Format::F64,
            GradSlice::Bf16(_) => Format::Bf16,
            GradSlice::F16(_) => Format::F16,
        }
    }

    fn range(&self, r: core::ops::Range<usize>) -> Self {
        match self {
            GradSlice::F32(s) => GradSlice::F32(&s[r]),
            GradSlice::F64(s) => GradSlice::F64(&s[r]),
            GradSlice::Bf16(s) => GradSlice::Bf16(&s[r]),
            GradSlice::F16(s) => GradSlice::F16(&s[r]),
        }
    }
}

/// The vector norm [`Kernel::grad_norm`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormType {
    /// The sum of absolute values (`norm_type=1`).
    L1,
    /// The Euclidean norm (`norm_type=2`, `clip_grad_norm_`'s default).
    L2,
    /// The largest absolute value (`norm_type=inf`).
    Inf,
}

/// How two partials of `norm` combine: a sum, or for `Inf` a maximum that propagates NaN as
/// torch's does (`f64::max` would drop it).
fn combine(norm: NormType, a: f64, b: f64) -> f64 {
    match norm {
        NormType::Inf => {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }
        NormType::L1 | NormType::L2 => a + b,
    }
}

/// Elements per block of the norm: the fixed unit of work (and of summation order), whatever
/// the threads.
const BLOCK: usize = 1 << 15;

/// The partial of one block: its sum of squares (L2), of absolute values (L1) or its maximum (Inf),
/// in `f64` (squares of `f32` values are exact there), eight accumulators in a fixed order.
fn block_partial(g: GradSlice<'_>, norm: NormType) -> f64 {
    fn fold<T: Copy>(s: &[T], widen: impl Fn(T) -> f64, norm: NormType) -> f64 {
        let mut acc = [0.0f64; 8];
        let chunks = s.chunks_exact(8);
        let rest = chunks.remainder();
        let term = |x: f64| match norm {
            NormType::L1 => x.abs(),
            NormType::L2 => x * x,
            NormType::Inf => x.abs(),
        };
        let combine = |a: f64, t: f64| combine(norm, a, t);
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = combine(*a, term(widen(x)));
            }
        }
        for (a, &x) in acc.iter_mut().zip(rest) {
            *a = combine(*a, term(widen(x)));
        }
        acc.iter().fold(0.0, |s, &a| combine(s, a))
    }
    match g {
        GradSlice::F32(s) => fold(s, |x| x as f64, norm),
        GradSlice::F64(s) => fold(s, |x| x, norm),
        GradSlice::Bf16(s) => fold(s, |x| x.to_f64(), norm),
        GradSlice::F16(s) => fold(s, |x| x.to_f64(), norm),
    }
}

/// `true` if no element of the block is NaN or infinite after division by `scale`.
fn block_finite(g: GradSlice<'_>, scale: f64) -> bool {
    // Dividing by a scale >= 1 cannot overflow: the raw values decide (a bit test, vectorised).
    if scale >= 1.0 {
        return match g {
            GradSlice::F32(s) => !s
                .iter()
                .fold(false, |a, x| a | (x.to_bits() & 0x7F80_0000 == 0x7F80_0000)),
            GradSlice::F64(s) => !s.iter().fold(false, |a, x| {
                a | (x.to_bits() & 0x7FF0_0000_0000_0000 == 0x7FF0_0000_0000_0000)
            }),
            GradSlice::Bf16(s) => !s
                .iter()
                .fold(false, |a, x| a | (x.to_bits() & 0x7F80 == 0x7F80)),
            GradSlice::F16(s) => !s
                .iter()
                .fold(false, |a, x| a | (x.to_bits() & 0x7C00 == 0x7C00)),
        };
    }
    match g {
        GradSlice::F32(s) => {
            let d = scale as f32;
            s.iter().all(|&x| (x / d).is_finite())
        }
        GradSlice::F64(s) => s.iter().all(|&x| (x / scale).is_finite()),
        GradSlice::Bf16(s) => {
            let d = scale as f32;
            s.iter().all(|&x| (x.to_f32() / d).is_finite())
        }
        GradSlice::F16(s) => {
            let d = scale as f32;
            s.iter().all(|&x| (x.to_f32() / d).is_finite())
        }
    }
}

/// Every `(tensor, block)` of the gradients, in order.
fn blocks<'a>(grads: &'a [GradSlice<'a>]) -> impl Iterator<Item = (usize, GradSlice<'a>)> + 'a {
    grads.iter().enumerate().flat_map(|(t, g)| {
        (0..g.len())
            .step_by(BLOCK)
            .map(move |start| (t, g.range(start..(start + BLOCK).min(g.len()))))
    })
}

impl Kernel {
    /// `true` if every gradient of every tensor, divided by `grad_scale`, is finite: what
    /// `GradScaler` checks before it lets the optimizer step (it skips the step otherwise). One
    /// read-only pass, parallel under [`crate::Threading::Parallel`] for large steps.
    ///
    /// ```
    /// use rmsprop_simd::{f16, Kernel};
    /// let g1 = vec![f16::from_f32(1.0); 100];
    /// let mut g2 = vec![f16::from_f32(2.0); 100];
    /// let k = Kernel::new();
    /// assert!(k.grads_are_finite(&[g1[..].into(), g2[..].into()], 65536.0)?);
    /// g2[7] = f16::INFINITY; // an overflow in the scaled backward pass
    /// assert!(!k.grads_are_finite(&[g1[..].into(), g2[..].into()], 65536.0)?);
    /// # Ok::<(), rmsprop_simd::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] when `grad_scale` is not finite and > 0.
    pub fn grads_are_finite(
        &self,
        grads: &[GradSlice<'_>],
        grad_scale: f64,
    ) -> Result<bool, Error> {
        if !(grad_scale.is_finite() && grad_scale > 0.0) {
            return Err(Error::InvalidHyperparameter {
                name: "grad_scale",
                value: grad_scale,
                reason: "must be finite and > 0",
            });
        }
        #[cfg(feature = "rayon")]
        if crate::threading::splits(self, grads.iter().map(GradSlice::len).sum()) {
            use rayon::prelude::*;
            let all: Vec<_> = blocks(grads).collect();
            return Ok(all
                .into_par_iter()
                .all(|(_, b)| block_finite(b, grad_scale)));
        }
        Ok(blocks(grads).all(|(_, b)| block_finite(b, grad_scale)))
    }

    /// The norm of all gradients together, as `clip_grad_norm_` defines it (the norm of the
    /// per-tensor norms, which for L1/L2/Inf is the norm of everything): per block of 32768
    /// elements a partial in `f64` with eight accumulators, blocks combined in order, so the
    /// result does not depend on the thread count (and is more accurate than PyTorch's `f32`).
    /// NaN or Inf gradients give a NaN or Inf norm.
    ///
    /// ```
    /// use rmsprop_simd::{clip_coefficient, Kernel, NormType};
    /// let (a, b) = (vec![3.0f32; 1], vec![4.0f32; 1]);
    /// let norm = Kernel::new().grad_norm(&[a[..].into(), b[..].into()], NormType::L2)?;
    /// assert_eq!(norm, 5.0);
    /// assert_eq!(clip_coefficient(norm, 1.0), (1.0f32 / (5.0 + 1e-6)) as f64);
    /// # Ok::<(), rmsprop_simd::Error>(())
    /// ```
    ///
    /// # Errors
    /// None today; a `Result` so that norms this crate may refuse later do not change the API.
    pub fn grad_norm(&self, grads: &[GradSlice<'_>], norm: NormType) -> Result<f64, Error> {
        let combine = |a: f64, p: f64| combine(norm, a, p);
        // Blocks' partials are combined in block order whichever thread computed them.
        #[cfg(feature = "rayon")]
        let total = {
            let elements: usize = grads.iter().map(GradSlice::len).sum();
            if crate::threading::splits(self, elements) {
                use rayon::prelude::*;
                let all: Vec<_> = blocks(grads).collect();
                let partials: Vec<f64> = all
                    .into_par_iter()
                    .map(|(_, b)| block_partial(b, norm))
                    .collect();
                partials.into_iter().fold(0.0, combine)
            } else {
                blocks(grads).fold(0.0, |a, (_, b)| combine(a, block_partial(b, norm)))
            }
        };
        #[cfg(not(feature = "rayon"))]
        let total = blocks(grads).fold(0.0, |a, (_, b)| combine(a, block_partial(b, norm)));
        Ok(match norm {
            NormType::L2 => sqrt(total),
            NormType::L1 | NormType::Inf => total,
        })
    }
}
fn sqrt(x: f64) -> f64 {
    #[cfg(feature = "std")]
    return x.sqrt();
    #[cfg(not(feature = "std"))]
    return libm::sqrt(x);
}

/// `clip_grad_norm_`'s coefficient, in its `f32` arithmetic: `max_norm / (total_norm + 1e-6)`,
/// clamped to at most 1. Pass it as [`crate::StepOptions::grad_multiplier`] to fold the clip
/// into the step (PyTorch multiplies the gradients by it in place, always; multiplying by 1 is
/// exact, so the step skips it then).
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    let c = max_norm as f32 / (total_norm as f32 + 1e-6f32);
    // NaN stays NaN (torch.clamp propagates it).
    (if c > 1.0 { 1.0 } else { c }) as f64
}
