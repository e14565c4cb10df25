//! The element types the kernel runs on (`f32`, `f64`) and the sealed SIMD vocabulary behind them.

use core::fmt::{Debug, Display};
use pulp::Simd;

/// A floating-point element type the optimizer steps: implemented for `f32` and `f64` only.
///
/// The trait is sealed; its SIMD plumbing is private, so pulp is not part of the public API.
pub trait Element:
    sealed::Sealed
    + crate::Storage<Compute = Self>
    + Copy
    + Default
    + PartialOrd
    + Debug
    + Display
    + Send
    + Sync
    + bytemuck::Pod
    + core::ops::Add<Output = Self>
    + core::ops::Sub<Output = Self>
    + core::ops::Mul<Output = Self>
    + core::ops::Div<Output = Self>
    + core::ops::Neg<Output = Self>
    + 'static
{
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// The largest finite value.
    const MAX: Self;
    /// The smallest positive normal value.
    const MIN_POSITIVE: Self;
    /// Rounds an `f64` to this type (round to nearest even, as `as` does).
    fn from_f64(value: f64) -> Self;
    /// Widens to `f64` (exact).
    fn to_f64(self) -> f64;
    /// `true` unless NaN or infinite.
    fn is_finite(self) -> bool;
    /// `true` if NaN.
    fn is_nan(self) -> bool;
    /// The raw bits, widened to `u64`.
    fn to_bits_u64(self) -> u64;
}

pub(crate) mod sealed {
    use super::Simd;

    /// The arithmetic the kernel and the reference use, spelled once per element type. Scalar ops
    /// are correctly rounded IEEE operations (`fma` fused, `sqrt` exact-rounded); the vector ops map
    /// to pulp's, with `mul_add` the always-fused one (never `mul_add_e`).
    pub trait Sealed: Copy + Sized {
        type Vector<S: Simd>: Copy + bytemuck::Pod;

        fn zero() -> Self;
        fn one() -> Self;
        fn fma(a: Self, b: Self, c: Self) -> Self;
        fn sqrt(a: Self) -> Self;

        fn lanes<S: Simd>() -> usize;
        fn splat<S: Simd>(simd: S, x: Self) -> Self::Vector<S>;
        fn vadd<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S>;
        fn vsub<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S>;
        fn vmul<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S>;
        fn vdiv<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S>;
        fn vneg<S: Simd>(simd: S, a: Self::Vector<S>) -> Self::Vector<S>;
        fn vfma<S: Simd>(
            simd: S,
            a: Self::Vector<S>,
            b: Self::Vector<S>,
            c: Self::Vector<S>,
        ) -> Self::Vector<S>;
        fn vsqrt<S: Simd>(simd: S, a: Self::Vector<S>) -> Self::Vector<S>;
        fn as_simd<S: Simd>(slice: &[Self]) -> (&[Self::Vector<S>], &[Self]);
        fn as_mut_simd<S: Simd>(slice: &mut [Self]) -> (&mut [Self::Vector<S>], &mut [Self]);
        fn partial_load<S: Simd>(simd: S, slice: &[Self]) -> Self::Vector<S>;
        fn partial_store<S: Simd>(simd: S, slice: &mut [Self], values: Self::Vector<S>);

        /// `hi` where `a > hi`, `lo` where `a < lo`, else `a` (NaN stays NaN on every backend).
        fn vclamp<S: Simd>(
            simd: S,
            a: Self::Vector<S>,
            lo: Self::Vector<S>,
            hi: Self::Vector<S>,
        ) -> Self::Vector<S>;
        /// `f32` vectors as this type's (the identity for `f32`; never called for `f64`, whose
        /// buffers are never 16-bit, and zero there).
        fn from_f32s<S: Simd>(v: S::f32s) -> Self::Vector<S>;
        /// The inverse of `from_f32s` (zero for `f64`).
        fn to_f32s<S: Simd>(v: Self::Vector<S>) -> S::f32s;
    }
}

macro_rules! impl_element {
    ($t:ident, $fma_libm:ident, $sqrt_libm:ident, [$splat:ident, $add:ident, $sub:ident, $mul:ident, $div:ident, $neg:ident, $mul_add:ident, $sqrt:ident, $as_simd:ident, $as_mut_simd:ident, $partial_load:ident, $partial_store:ident, $gt:ident, $lt:ident, $select:ident $(,)?], $from_f32s:expr, $to_f32s:expr) => {
        impl Element for $t {
            const NAME: &'static str = stringify!($t);
            const MAX: Self = $t::MAX;
            const MIN_POSITIVE: Self = $t::MIN_POSITIVE;
            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                $t::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            #[inline(always)]
            fn to_bits_u64(self) -> u64 {
                self.to_bits() as u64
            }
        }

        impl sealed::Sealed for $t {
            type Vector<S: Simd> = impl_element!(@vec S, $t);

            #[inline(always)]
            fn zero() -> Self {
                0.0
            }
            #[inline(always)]
            fn one() -> Self {
                1.0
            }
            #[inline(always)]
            fn fma(a: Self, b: Self, c: Self) -> Self {
                #[cfg(feature = "std")]
                return $t::mul_add(a, b, c);
                #[cfg(not(feature = "std"))]
                return libm::$fma_libm(a, b, c);
            }
            #[inline(always)]
            fn sqrt(a: Self) -> Self {
                #[cfg(feature = "std")]
                return $t::sqrt(a);
                #[cfg(not(feature = "std"))]
                return libm::$sqrt_libm(a);
            }

            #[inline(always)]
            fn lanes<S: Simd>() -> usize {
                core::mem::size_of::<Self::Vector<S>>() / core::mem::size_of::<$t>()
            }
            #[inline(always)]
            fn splat<S: Simd>(simd: S, x: Self) -> Self::Vector<S> {
                simd.$splat(x)
            }
            #[inline(always)]
            fn vadd<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S> {
                simd.$add(a, b)
            }
            #[inline(always)]
            fn vsub<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S> {
                simd.$sub(a, b)
            }
            #[inline(always)]
            fn vmul<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S> {
                simd.$mul(a, b)
            }
            #[inline(always)]
            fn vdiv<S: Simd>(simd: S, a: Self::Vector<S>, b: Self::Vector<S>) -> Self::Vector<S> {
                simd.$div(a, b)
            }
            #[inline(always)]
            fn vneg<S: Simd>(simd: S, a: Self::Vector<S>) -> Self::Vector<S> {
                simd.$neg(a)
            }
            #[inline(always)]
            fn vfma<S: Simd>(
                simd: S,
                a: Self::Vector<S>,
                b: Self::Vector<S>,
                c: Self::Vector<S>,
            ) -> Self::Vector<S> {
                // `mul_add` is fused on every backend (pulp's scalar one calls fma); `mul_add_e`
                // is not, and would break bit-equality with the reference.
                simd.$mul_add(a, b, c)
            }
            #[inline(always)]
            fn vsqrt<S: Simd>(simd: S, a: Self::Vector<S>) -> Self::Vector<S> {
                impl_element!(@sqrt $t, simd, a, $sqrt)
            }
            #[inline(always)]
            fn as_simd<S: Simd>(slice: &[Self]) -> (&[Self::Vector<S>], &[Self]) {
                S::$as_simd(slice)
            }
            #[inline(always)]
            fn as_mut_simd<S: Simd>(slice: &mut [Self]) -> (&mut [Self::Vector<S>], &mut [Self]) {
                S::$as_mut_simd(slice)
            }
            #[inline(always)]
            fn partial_load<S: Simd>(simd: S, slice: &[Self]) -> Self::Vector<S> {
                simd.$partial_load(slice)
            }
            #[inline(always)]
            fn partial_store<S: Simd>(simd: S, slice: &mut [Self], values: Self::Vector<S>) {
                simd.$partial_store(slice, values)
            }
            #[inline(always)]
            fn vclamp<S: Simd>(
                simd: S,
                a: Self::Vector<S>,
                lo: Self::Vector<S>,
                hi: Self::Vector<S>,
            ) -> Self::Vector<S> {
                // Comparisons with NaN are false: NaN passes through both selects unchanged.
                let a = simd.$select(simd.$gt(a, hi), hi, a);
                simd.$select(simd.$lt(a, lo), lo, a)
            }
            #[inline(always)]
            fn from_f32s<S: Simd>(v: S::f32s) -> Self::Vector<S> {
                ($from_f32s)(v)
            }
            #[inline(always)]
            fn to_f32s<S: Simd>(v: Self::Vector<S>) -> S::f32s {
                ($to_f32s)(v)
            }
        }
    };
    // `f32`: without the divider on AVX-512 (`crate::sqrt`), the same bits.
    (@sqrt f32, $simd:ident, $a:ident, $sqrt:ident) => {
        crate::sqrt::sqrt_f32s($simd, $a)
    };
    (@sqrt f64, $simd:ident, $a:ident, $sqrt:ident) => {
        $simd.$sqrt($a)
    };
    (@vec $s:ident, f32) => {
        $s::f32s
    };
    (@vec $s:ident, f64) => {
        $s::f64s
    };
}

impl_element!(
    f32,
    fmaf,
    sqrtf,
    [
        splat_f32s,
        add_f32s,
        sub_f32s,
        mul_f32s,
        div_f32s,
        neg_f32s,
        mul_add_f32s,
        sqrt_f32s,
        as_simd_f32s,
        as_mut_simd_f32s,
        partial_load_f32s,
        partial_store_f32s,
        greater_than_f32s,
        less_than_f32s,
        select_f32s,
    ],
    |v| v,
    |v| v
);
impl_element!(
    f64,
    fma,
    sqrt,
    [
        splat_f64s,
        add_f64s,
        sub_f64s,
        mul_f64s,
        div_f64s,
        neg_f64s,
        mul_add_f64s,
        sqrt_f64s,
        as_simd_f64s,
        as_mut_simd_f64s,
        partial_load_f64s,
        partial_store_f64s,
        greater_than_f64s,
        less_than_f64s,
        select_f64s,
    ],
    |_| bytemuck::Zeroable::zeroed(),
    |_| bytemuck::Zeroable::zeroed()
);
