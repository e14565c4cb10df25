//! Storage formats: what a buffer holds in memory (`f32`, `f64`, [`bf16`], [`f16`](struct@f16)), split from
//! the type the step computes in ([`Storage::Compute`]).
//!
//! A 16-bit value is widened exactly to `f32`, the `f32` step runs (any [`crate::Semantics`]), and
//! each result is rounded back to its storage type: to nearest-even by default (IEEE conversion,
//! as `half`'s `from_f32` and `tensor.to(torch.bfloat16)` do), or stochastically
//! ([`Rounding::Stochastic`]) for 16-bit parameters and state. The functions of this module are the
//! scalar specification of those roundings; every SIMD backend equals them bit for bit.
//!
//! ```
//! use rmsprop_simd::storage::{bf16_stochastic, random_bits, Buffer16};
//! use rmsprop_simd::bf16;
//!
//! let x = 1.0f32 + f32::EPSILON; // between two bf16 values, much nearer the lower one
//! assert_eq!(bf16::from_f32(x), bf16::ONE); // nearest-even: the update vanishes
//! let ups = (0..10_000u64)
//!     .filter(|&seed| bf16_stochastic(x, random_bits(seed, 0, Buffer16::Params, 0)) > bf16::ONE)
//!     .count();
//! // rounded up with probability (x - 1) / ulp = 2^-23 / 2^-7 = 1/65536: rarely, but on average exact
//! assert!(ups < 10);
//! ```

pub use half::{bf16, f16};

use crate::Element;
use core::fmt::Debug;

/// How a buffer is stored in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// bfloat16: the upper half of an `f32` (8 exponent bits, 7 mantissa bits).
    Bf16,
    /// IEEE binary16 (5 exponent bits, 10 mantissa bits, subnormals below 2^-14).
    F16,
}

impl Format {
    /// `"f32"`, `"f64"`, `"bf16"` or `"f16"`.
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F64 => "f64",
            Format::Bf16 => "bf16",
            Format::F16 => "f16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Format::F32 => 4,
            Format::F64 => 8,
            Format::Bf16 | Format::F16 => 2,
        }
    }

    /// `true` for the 16-bit formats.
    pub fn is_16_bit(self) -> bool {
        self.size() == 2
    }
}

/// A type a buffer may be stored in: `f32`, `f64`, [`bf16`], [`f16`](struct@f16) (sealed).
///
/// Parameters, gradients and state of one step share a [`Storage::Compute`] type: `f64` buffers
/// go only with `f64`; `f32`, `bf16` and `f16` mix freely and compute in `f32`.
pub trait Storage:
    sealed::Sealed + Copy + Default + Debug + Send + Sync + bytemuck::Pod + 'static
{
    /// The type the step computes in (`f32` for `f32`, `bf16`, `f16`; `f64` for `f64`).
    type Compute: Element;
    /// The format in memory.
    const FORMAT: Format;
    /// Widens to the compute type (exact).
    fn widen(self) -> Self::Compute;
    /// Rounds from the compute type to nearest-even (IEEE conversion; NaN stays NaN, values past
    /// the largest finite one become infinities as IEEE conversion gives them).
    fn round(x: Self::Compute) -> Self;
}

pub(crate) mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

macro_rules! identity_storage {
    ($t:ty, $f:ident) => {
        impl Storage for $t {
            type Compute = $t;
            const FORMAT: Format = Format::$f;
            #[inline(always)]
            fn widen(self) -> $t {
                self
            }
            #[inline(always)]
            fn round(x: $t) -> $t {
                x
            }
        }
    };
}
identity_storage!(f32, F32);
identity_storage!(f64, F64);

impl Storage for bf16 {
    type Compute = f32;
    const FORMAT: Format = Format::Bf16;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn round(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
}

impl Storage for f16 {
    type Compute = f32;
    const FORMAT: Format = Format::F16;
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn round(x: f32) -> f16 {
        f16::from_f32(x)
    }
}

/// How 16-bit parameters and state are rounded after the `f32` step (32-bit buffers are
/// never rounded; the 16-bit parameter copy is always rounded to nearest-even).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Rounding {
    /// Round to nearest, ties to even: IEEE conversion (the default).
    #[default]
    NearestEven,
    /// Stochastic rounding: round up with probability equal to the distance from the value below,
    /// in units of the 16-bit spacing there, so that the rounding is unbiased on average. The
    /// random bits are [`random_bits`]`(seed, step, buffer, index)`: a function of the element's
    /// index in its buffer, not of threads, chunking or backend. Give each tensor its own `seed`
    /// (or mix its index into it) and a new `step` each call.
    Stochastic {
        /// The key of the random stream.
        seed: u64,
        /// The step count, a second key (a new stream every step).
        step: u64,
    },
}

/// The buffers that get their own random stream under [`Rounding::Stochastic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Buffer16 {
    /// The parameters.
    Params = 0,
    /// `square_avg`.
    SquareAvg = 1,
    /// `grad_avg`.
    GradAvg = 2,
    /// `momentum_buffer`.
    MomentumBuffer = 3,
}

/// Gradient pre-processing and rounding of one step, fused into its single pass. The default
/// changes nothing: a plain step.
///
/// Per gradient element, in this order: widened to the compute type; divided by `grad_scale`
/// (as `GradScaler.unscale_` and PyTorch's fused optimizers' `grad_scale` do); clamped to
/// `[-clip_value, clip_value]` (as `clip_grad_value_`; NaN stays NaN); multiplied by
/// `grad_multiplier` (the coefficient of a global-norm clip, see [`crate::clip_coefficient`]);
/// then the step.
///
/// ```
/// use rmsprop_simd::{bf16, Hyperparameters, Kernel, Rounding, State, StepOptions};
///
/// let opts = StepOptions { grad_scale: 1024.0, ..StepOptions::default() };
/// let mut p = vec![bf16::from_f32(1.0); 64];
/// let g = vec![bf16::from_f32(512.0); 64]; // a scaled gradient: 0.5 unscaled
/// let mut v = vec![0.0f32; 64];
/// Kernel::new().step_with(&Hyperparameters::default(), &opts, &mut p, &g, State::new(&mut v), None)?;
/// assert_eq!(v[0], 0.01 * 0.25);
/// # Ok::<(), rmsprop_simd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOptions {
    /// Each gradient is divided by this (finite, > 0; rounded to the compute type). Default 1.
    pub grad_scale: f64,
    /// Clamp each (unscaled) gradient to `[-clip_value, clip_value]` (>= 0, not NaN; rounded to
    /// the compute type). Default `None`.
    pub clip_value: Option<f64>,
    /// Multiply each gradient by this after clamping (finite, >= 0; rounded to the compute
    /// type). Default 1.
    pub grad_multiplier: f64,
    /// Rounding of 16-bit parameters and state.
    pub rounding: Rounding,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            grad_scale: 1.0,
            clip_value: None,
            grad_multiplier: 1.0,
            rounding: Rounding::NearestEven,
        }
    }
}

impl StepOptions {
    /// `true` when the gradients are used as they are (no scale, clamp or multiplier).
    pub fn is_plain_gradient(&self) -> bool {
        self.grad_scale == 1.0 && self.clip_value.is_none() && self.grad_multiplier == 1.0
    }
}

/// A 16-bit parameter copy written in the same pass: the new parameters rounded to nearest-even.
#[derive(Debug)]
pub enum ParamsCopy<'a> {
    /// A bf16 copy.
    Bf16(&'a mut [bf16]),
    /// An f16 copy.
    F16(&'a mut [f16]),
}

impl ParamsCopy<'_> {
    /// Its length.
    pub fn len(&self) -> usize {
        match self {
            ParamsCopy::Bf16(s) => s.len(),
            ParamsCopy::F16(s) => s.len(),
        }
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its format.
    pub fn format(&self) -> Format {
        match self {
            ParamsCopy::Bf16(_) => Format::Bf16,
            ParamsCopy::F16(_) => Format::F16,
        }
    }
}

impl<'a> From<&'a mut [bf16]> for ParamsCopy<'a> {
    fn from(s: &'a mut [bf16]) -> Self {
        ParamsCopy::Bf16(s)
    }
}

impl<'a> From<&'a mut [f16]> for ParamsCopy<'a> {
    fn from(s: &'a mut [f16]) -> Self {
        ParamsCopy::F16(s)
    }
}

const fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Chris Wellons' `lowbias32`: a 32-bit bijective integer hash (two multiplies).
#[inline(always)]
pub(crate) const fn lowbias32(x: u32) -> u32 {
    let x = (x ^ (x >> 16)).wrapping_mul(0x7FEB_352D);
    let x = (x ^ (x >> 15)).wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// The 32-bit key of one random stream: `(seed, step, buffer)` and the upper half of the index.
pub(crate) const fn stream_key(seed: u64, step: u64, buffer: Buffer16, index_hi: u32) -> u32 {
    let k = splitmix64(
        splitmix64(seed ^ splitmix64(step)) ^ (((buffer as u64) << 32) | index_hi as u64),
    );
    (k ^ (k >> 32)) as u32
}

/// The random bits of element `index` of `buffer` under [`Rounding::Stochastic`]`{ seed, step }`:
/// `lowbias32(index_lo ^ key)`, the key a SplitMix64 mix of `(seed, step, buffer, index_hi)`.
/// For a fixed index, as the key runs over all values, the bits are exactly uniform (the hash is
/// a bijection).
pub const fn random_bits(seed: u64, step: u64, buffer: Buffer16, index: u64) -> u32 {
    lowbias32(index as u32 ^ stream_key(seed, step, buffer, (index >> 32) as u32))
}

/// Stochastic rounding of `x` to bf16 with random bits `random` (the low 16 are used): the 16
/// bits that bf16 drops are added to `random & 0xFFFF` and the sum truncated, so `x` rounds away
/// from zero with probability `dropped / 2^16`. NaN, infinities and values past the largest
/// finite bf16 round to nearest-even (as IEEE conversion does); NaN stays NaN.
#[inline]
pub fn bf16_stochastic(x: f32, random: u32) -> bf16 {
    let u = x.to_bits();
    if u & 0x7FFF_FFFF > 0x7F7F_0000 {
        return bf16::from_f32(x);
    }
    bf16::from_bits(((u + (random & 0xFFFF)) >> 16) as u16)
}

/// Stochastic rounding of `x` to f16 with random bits `random`: `x` rounds away from zero with
/// probability equal to its distance from the f16 value below (towards zero), in units of the
/// f16 spacing there, resolved with 13 random bits in the normal range and up to 31 among the
/// subnormals (below `2^-32` in magnitude the dropped bits beyond 31 are truncated first). NaN,
/// infinities and values past the largest finite f16 (65504) round to nearest-even; NaN stays NaN.
///
/// The exact integer algorithm (the SIMD kernel runs the same, lane by lane):
/// - `|x| >= 2^-14`: `((|x|.bits + (random & 0x1FFF)) >> 13) - (112 << 10)`;
/// - below, with `M` the significand of `|x|` (implicit bit included) and `s` the shift to
///   units of `2^-24`: `(M + (random >> (32 - s))) >> s` when `s <= 31`, else
///   `((M >> min(s - 31, 31)) + (random >> 1)) >> 31`.
#[inline]
pub fn f16_stochastic(x: f32, random: u32) -> f16 {
    let u = x.to_bits();
    let sign = ((u >> 16) & 0x8000) as u16;
    let a = u & 0x7FFF_FFFF;
    if a > 0x477F_E000 {
        return f16::from_f32(x);
    }
    let magnitude = if a >= 0x3880_0000 {
        ((a + (random & 0x1FFF)) >> 13) - (112 << 10)
    } else {
        let e = a >> 23;
        let (m, s) = if e == 0 {
            (a, 125)
        } else {
            ((a & 0x7F_FFFF) | 0x80_0000, 126 - e)
        };
        if s <= 31 {
            (m + (random >> (32 - s))) >> s
        } else {
            ((m >> (s - 31).min(31)) + (random >> 1)) >> 31
        }
    };
    f16::from_bits(sign | magnitude as u16)
}

/// Rounds `x` to `S` (a 16-bit format) as `rounding` says, for element `index` of `buffer`;
/// 32- and 64-bit storage is returned as it is. The reference's rounding step.
#[inline]
pub(crate) fn round_to<S: Storage>(
    x: S::Compute,
    rounding: Rounding,
    buffer: Buffer16,
    index: u64,
) -> S {
    match (S::FORMAT, rounding) {
        (Format::Bf16 | Format::F16, Rounding::Stochastic { seed, step }) => {
            let r = random_bits(seed, step, buffer, index);
            let x = x.to_f64() as f32; // exact: the compute type of a 16-bit format is f32
            let bits = if S::FORMAT == Format::Bf16 {
                bf16_stochastic(x, r).to_bits()
            } else {
                f16_stochastic(x, r).to_bits()
            };
            bytemuck::cast(bits)
        }
        _ => S::round(x),
    }
}
