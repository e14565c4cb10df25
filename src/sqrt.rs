//! `sqrt` of `f32` vectors, correctly rounded, without the divider on AVX-512.
//!
//! The divider executes one `vsqrtps` and one `vdivps` per vector of every step, and in cache it
//! is the kernel's bound (measured here: `vsqrtps` zmm 0.26 ns/element, `vdivps` 0.22, both
//! 0.48-0.50; this module's square root beside the division 0.23). On AVX-512 the square root is
//! computed instead from `vrsqrt14ps` (relative error below 2^-14, Intel's and AMD's manuals)
//! by one coupled Newton-Raphson (Goldschmidt) iteration for `g ~ sqrt(a)` and `h ~ 1/(2
//! sqrt(a))`, then Markstein's correction `g + h * (a - g*g)` with the residual exact in one
//! `fma`. The result is the correctly rounded `sqrt(a)`, the same bits as `vsqrtps`, for every
//! `a` in `[2^-101, f32::MAX]`; other lanes (zero, tiny, subnormal, negative, infinite, NaN:
//! rare in a step, `square_avg` is positive) take `vsqrtps`, through one branch per vector.
//!
//! The proof is exhaustive (`tests` below, in release builds): every `f32` bit pattern against
//! `vsqrtps`, with this CPU's `vrsqrt14ps`; and every input of the fast range again with the
//! starting value replaced by the exact `1/sqrt(a)` times `1 +- 2^-14` and `1 +- 2^-13` (twice
//! the documented error), so the result does not depend on one vendor's approximation table.
//! Everywhere else (AVX2, NEON, scalar, `f64`) the square root is the instruction.
use pulp::Simd;

/// `sqrt(a)` lane by lane, correctly rounded: the same bits as `simd.sqrt_f32s(a)`.
#[inline(always)]
pub(crate) fn sqrt_f32s<S: Simd>(simd: S, a: S::f32s) -> S::f32s {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(&v4) = (&simd as &dyn core::any::Any).downcast_ref::<pulp::x86::V4>() {
        // `S` is `V4`, so `S::f32s` is `f32x16` (the cast checks the size).
        return bytemuck::cast(avx512(v4, bytemuck::cast(a)));
    }
    simd.sqrt_f32s(a)
}

/// The bits of `2^-101`: from here to `f32::MAX` the fast square root is exact (below, the
/// residual `a - g*g` underflows).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
const FAST_MIN: u32 = 0x0D00_0000;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
const FAST_END: u32 = 0x7F80_0000;

// Not inlined in unoptimised builds: there, every inlined copy (in every backend's loops, the
// other backends' included) keeps its own stack slots, and the large passes' frames outgrow a
// test thread's stack.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[cfg_attr(not(debug_assertions), inline(always))]
fn avx512(simd: pulp::x86::V4, a: pulp::f32x16) -> pulp::f32x16 {
    use pulp::cast;
    let y = cast(simd.avx512f._mm512_rsqrt14_ps(cast(a)));
    let s = refine(simd, a, y);
    // Unsigned `bits - FAST_MIN < FAST_END - FAST_MIN`: positive, finite and not tiny.
    let bits: pulp::u32x16 = cast(a);
    let fast = simd.avx512f._mm512_cmplt_epu32_mask(
        cast(simd.sub_u32s(bits, simd.splat_u32s(FAST_MIN))),
        cast(simd.splat_u32s(FAST_END - FAST_MIN)),
    );
    if fast == u16::MAX {
        s
    } else {
        // Rare: the instruction for the lanes outside the range.
        cast(simd.avx512f._mm512_mask_sqrt_ps(cast(s), !fast, cast(a)))
    }
}

/// Markstein's correctly rounded square root from `y ~ 1/sqrt(a)` (relative error up to 2^-13
/// checked exhaustively), for `a` in `[2^-101, f32::MAX]`.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(always)]
fn refine(simd: pulp::x86::V4, a: pulp::f32x16, y: pulp::f32x16) -> pulp::f32x16 {
    let half = simd.splat_f32s(0.5);
    let g = simd.mul_f32s(a, y);
    let h = simd.mul_f32s(half, y);
    // r = 1/2 - g*h; g and h to about 2^-27.
    let r = simd.mul_add_f32s(simd.neg_f32s(g), h, half);
    let g = simd.mul_add_f32s(g, r, g);
    let h = simd.mul_add_f32s(h, r, h);
    // The exact residual a - g*g, and the correction rounded once.
    let d = simd.mul_add_f32s(simd.neg_f32s(g), g, a);
    simd.mul_add_f32s(d, h, g)
}

#[cfg(all(test, any(target_arch = "x86", target_arch = "x86_64")))]
mod tests {
    // The test harness has std even when the library is built without it.
    extern crate std;
    use super::*;
    use pulp::{cast, f32x16, x86::V4};
    use std::{eprintln, vec::Vec};

    /// How each input is computed.
    #[derive(Clone, Copy)]
    enum Via {
        /// `sqrt_f32s`.
        Fast,
        /// `refine` from `1/sqrt(a)` (two roundings: within 2^-23) times this factor.
        Start(f32),
    }

    /// Every bit pattern in `[start, end)` (a multiple of 16 long) through `via`, against the
    /// instruction; returns the mismatches. Runs in pulp's AVX-512 context (a closure would not
    /// be inlined there).
    fn mismatches(simd: V4, start: u32, end: u32, via: Via) -> Vec<u32> {
        struct Run(u32, u32, Via);
        impl pulp::WithSimd for Run {
            type Output = Vec<u32>;
            #[inline(always)]
            fn with_simd<S: Simd>(self, simd: S) -> Vec<u32> {
                let simd = *(&simd as &dyn core::any::Any).downcast_ref::<V4>().unwrap();
                let Run(start, end, via) = self;
                let mut bad = Vec::new();
                let mut b = start as u64;
                let iota: pulp::u32x16 = cast(core::array::from_fn::<u32, 16, _>(|l| l as u32));
                while b < end as u64 {
                    let x = simd.add_u32s(simd.splat_u32s(b as u32), iota);
                    let a: f32x16 = cast(x);
                    let want = simd.sqrt_f32s(a);
                    let got = match via {
                        Via::Fast => sqrt_f32s(simd, a),
                        Via::Start(f) => {
                            let y = simd.div_f32s(simd.splat_f32s(1.0), want);
                            refine(simd, a, simd.mul_f32s(y, simd.splat_f32s(f)))
                        }
                    };
                    let differ = simd.avx512f._mm512_cmpneq_epi32_mask(cast(got), cast(want));
                    if differ != 0 {
                        let (got, want, x): ([f32; 16], [f32; 16], [u32; 16]) =
                            (cast(got), cast(want), cast(x));
                        // NaN where the instruction gives NaN (the payload is the instruction's).
                        bad.extend(
                            (0..16)
                                .filter(|&l| {
                                    differ >> l & 1 == 1 && !(got[l].is_nan() && want[l].is_nan())
                                })
                                .map(|l| x[l]),
                        );
                    }
                    b += 16;
                }
                bad
            }
        }
        Simd::vectorize(simd, Run(start, end, via))
    }

    fn v4() -> Option<V4> {
        let v4 = V4::try_new();
        if v4.is_none() {
            eprintln!("NOT TESTED: this CPU has no AVX-512 (the fast square root is not used)");
        }
        v4
    }

    /// A spread of inputs (every 4099th pattern, and +-64 around each power of two), fast
    /// enough for unoptimised builds; the exhaustive tests below run in release.
    #[test]
    fn fast_sqrt_equals_the_instruction_on_a_spread() {
        let Some(simd) = v4() else { return };
        let mut inputs: Vec<u32> = (0..u32::MAX / 4099).map(|i| i * 4099).collect();
        for e in 0..=255u32 {
            for s in [0, 0x8000_0000] {
                let p = s | e << 23;
                inputs.extend((0..128).map(|i| p.wrapping_add(i).wrapping_sub(64)));
            }
        }
        inputs.extend([
            0,
            1,
            0x8000_0000,
            FAST_MIN - 1,
            FAST_MIN,
            0x7F7F_FFFF,
            0x7F80_0000,
        ]);
        inputs.extend([0x7FC0_0000, 0x7F80_0001, 0xFF80_0000]);
        inputs.resize(inputs.len().div_ceil(16) * 16, 0);
        for chunk in inputs.chunks(16) {
            let x: [u32; 16] = chunk.try_into().unwrap();
            let a: f32x16 = cast(x);
            let got: [u32; 16] = cast(sqrt_f32s(simd, a));
            let want: [u32; 16] = cast(simd.sqrt_f32s(a));
            for l in 0..16 {
                let (g, w) = (f32::from_bits(got[l]), f32::from_bits(want[l]));
                assert!(
                    got[l] == want[l] || (g.is_nan() && w.is_nan()),
                    "sqrt({:e} = {:#x}): {g:e} != {w:e}",
                    f32::from_bits(x[l]),
                    x[l]
                );
            }
        }
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "exhaustive (2^32 inputs): runs in release, `cargo test --release --lib sqrt` (CI)"
    )]
    fn fast_sqrt_equals_the_instruction_on_every_f32() {
        let Some(simd) = v4() else { return };
        // 2^32 - 16 patterns, then the last 16 (negative NaNs).
        let mut bad = mismatches(simd, 0, u32::MAX - 15, Via::Fast);
        bad.extend(mismatches(simd, u32::MAX - 15, u32::MAX, Via::Fast));
        assert!(bad.is_empty(), "{:x?}", &bad[..bad.len().min(20)]);
    }

    /// The refinement from a worse starting value than `vrsqrt14ps` may give: the exact
    /// `1/sqrt(a)` times `1 + e`, for `e` = +-2^-14 (the documented bound) and +-2^-13.
    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "exhaustive (2^31 inputs x 4): runs in release, `cargo test --release --lib sqrt` (CI)"
    )]
    fn refinement_is_exact_for_any_start_within_twice_the_documented_error() {
        let Some(simd) = v4() else { return };
        for e in [
            2f64.powi(-14),
            -2f64.powi(-14),
            2f64.powi(-13),
            -2f64.powi(-13),
        ] {
            let bad = mismatches(simd, FAST_MIN, FAST_END, Via::Start((1.0 + e) as f32));
            assert!(
                bad.is_empty(),
                "e = {e:e}: {:x?}",
                &bad[..bad.len().min(20)]
            );
        }
    }

    /// The check has teeth: one starting value too far off (2^-11) does give wrong bits.
    #[test]
    fn refinement_from_a_poor_start_is_caught() {
        let Some(simd) = v4() else { return };
        let factor = (1.0 + 2f64.powi(-11)) as f32;
        let bad = mismatches(simd, 0x3F80_0000, 0x4080_0000, Via::Start(factor));
        assert!(!bad.is_empty());
    }
}
