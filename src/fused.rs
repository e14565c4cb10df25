//! The fused mixed loop: for the storage shapes training uses, PyTorch's rule and AVX-512 or
//! AVX2, each vector is loaded (widened from 16-bit storage), its gradient pre-processed,
//! stepped and rounded back in registers, so the conversions overlap the divider instead of
//! adding to it. On AVX-512 the square root avoids the divider ([`crate::sqrt`]), and where the
//! CPU has AVX512-BF16 the bf16 results are rounded to nearest-even by `vcvtne2ps2bf16`
//! (all-bf16 storage: 32 elements per load, split into even and odd elements, rounded per buffer
//! and interleaved back, [`Fused::drive_pairs`]; or the master weights' bf16 copy) and
//! stochastically by integer arithmetic, two vectors per merge ([`sr_pair_m512`]); without the
//! gradient pre-processing its identity operations are not executed. Every stream is prefetched
//! ([`crate::kernel::prefetch`]). (`roofline --mixed` at 3e7 elements, all-bf16: 1.69-1.81x the
//! f32 kernel's elements per second, against 1.35x with the integer rounding and 0.74x staged.)
//!
//! Every buffer's format is a const generic, so each shape is its own branch-free loop. The
//! code is bounded: seven shapes (`run_fused`) x PyTorch's 16 rule variants, on AVX-512 and
//! AVX2, in two non-generic functions, so it is compiled once, in this crate, and not again by
//! every crate that steps (all shapes x rules x backends, generic, took 4-5 minutes per
//! downstream release build). Other shapes, rules and backends (scalar, NEON), and a gradient
//! scale that is not a power of two, take the staged pass of [`crate::mixed`], which handles
//! everything; both equal [`crate::reference::step_with`] bit for bit (`tests/mixed.rs` runs
//! every combination on every backend).
#![cfg_attr(
    not(any(target_arch = "x86", target_arch = "x86_64")),
    allow(dead_code, unused_imports)
)]
use crate::kernel::{prefetch, pytorch_per_variant, Drive, Updated, VectorRule};
use crate::mixed::{
    bf16_rne, bf16_sr, f16_rne, f16_sr, load_native, lowbias32, narrow_u16, store_native,
    widen_bf16, widen_f16, widen_u16, Dst, MixedBuffers, Prep, Scale, Src, IOTA, MAX_LANES,
};
use crate::{Coefficients, Element, Rule};
use pulp::Simd;

/// Stored in the compute type.
const N: u8 = 0;
/// Stored as bf16.
const B: u8 = 1;
/// Stored as f16.
const H: u8 = 2;

/// `X` flag: the gradient is pre-processed (scaled, clamped, multiplied); without it the
/// identities are not executed.
const PRE: u8 = 1;
/// `X` flag: bf16 results are rounded by AVX512-BF16's `vcvtne2ps2bf16` (all-bf16: params and
/// state in pairs of vectors, one instruction for 32 lanes; or the bf16 params copy), nearest-even
/// as `half`; the rare vector with a subnormal lane takes the integer rounding (the instruction
/// flushes subnormals).
const CVT: u8 = 2;

/// A buffer the pass writes: the native slice or the 16-bit one (the other is empty).
struct Rw<'a, T> {
    n: &'a mut [T],
    h: &'a mut [u16],
}

/// A buffer the pass reads.
struct Ro<'a, T> {
    n: &'a [T],
    h: &'a [u16],
}

fn rw<T>(d: Option<Dst<'_, T>>) -> Rw<'_, T> {
    match d {
        Some(Dst::Native(n)) => Rw { n, h: &mut [] },
        Some(Dst::Bf16(h)) | Some(Dst::F16(h)) => Rw { n: &mut [], h },
        None => Rw {
            n: &mut [],
            h: &mut [],
        },
    }
}

fn format<T>(d: &Dst<'_, T>) -> u8 {
    match d {
        Dst::Native(_) => N,
        Dst::Bf16(_) => B,
        Dst::F16(_) => H,
    }
}

/// Room for one vector of a tail, in either storage.
struct Pad<T> {
    n: [T; MAX_LANES],
    h: [u16; MAX_LANES],
}

impl<T: Element> Pad<T> {
    fn new() -> Self {
        Pad {
            n: [T::zero(); MAX_LANES],
            h: [0; MAX_LANES],
        }
    }
}

/// `s[start..]` (shorter than `w`) copied into `pad`, lengthened to `w`; empty stays empty.
#[inline(always)]
fn pad_tail<'p, X: Copy>(s: &[X], start: usize, w: usize, pad: &'p mut [X]) -> &'p mut [X] {
    if s.is_empty() {
        return &mut [];
    }
    pad[..s.len() - start].copy_from_slice(&s[start..]);
    &mut pad[..w]
}

impl<T> Ro<'_, T> {
    /// The first `len` elements of the slice of format `F` (which must hold them).
    #[inline(always)]
    fn head_of<const F: u8>(&self, len: usize) -> Ro<'_, T> {
        if F == N {
            Ro {
                n: &self.n[..len],
                h: &[],
            }
        } else {
            Ro {
                n: &[],
                h: &self.h[..len],
            }
        }
    }
}

/// `s[..len]`, or empty if `s` is.
#[inline(always)]
fn cut<X>(s: &mut [X], len: usize) -> &mut [X] {
    if s.is_empty() {
        s
    } else {
        &mut s[..len]
    }
}

impl<T: Copy> Rw<'_, T> {
    /// The first `len` elements (of the non-empty slice).
    #[inline(always)]
    fn head(&mut self, len: usize) -> Rw<'_, T> {
        Rw {
            n: cut(self.n, len),
            h: cut(self.h, len),
        }
    }

    /// The first `len` elements of the slice of format `F` (which must hold them).
    #[inline(always)]
    fn head_of<const F: u8>(&mut self, len: usize) -> Rw<'_, T> {
        if F == N {
            Rw {
                n: &mut self.n[..len],
                h: &mut [],
            }
        } else {
            Rw {
                n: &mut [],
                h: &mut self.h[..len],
            }
        }
    }

    /// The elements from `start` on, copied into `pad` and lengthened to `w`.
    #[inline(always)]
    fn pad<'p>(&self, start: usize, w: usize, pad: &'p mut Pad<T>) -> Rw<'p, T> {
        Rw {
            n: pad_tail(self.n, start, w, &mut pad.n),
            h: pad_tail(self.h, start, w, &mut pad.h),
        }
    }

    /// Copies a padded tail back.
    #[inline(always)]
    fn unpad(&mut self, start: usize, pad: &Pad<T>) {
        let (n, h) = (self.n.len(), self.h.len());
        if n > 0 {
            self.n[start..].copy_from_slice(&pad.n[..n - start]);
        }
        if h > 0 {
            self.h[start..].copy_from_slice(&pad.h[..h - start]);
        }
    }
}

/// The buffers of a fused pass with formats `P` (params), `G` (grads), `V` (square_avg,
/// grad_avg, momentum_buffer), `C` (the params copy; `N` for none), stochastic rounding `SR` and
/// the flags `X` ([`PRE`], [`CVT`]).
pub(crate) struct Fused<
    'a,
    T,
    const P: u8,
    const G: u8,
    const V: u8,
    const C: u8,
    const SR: bool,
    const X: u8,
> {
    p: Rw<'a, T>,
    g: Ro<'a, T>,
    v: Rw<'a, T>,
    a: Rw<'a, T>,
    b: Rw<'a, T>,
    c: Rw<'a, T>,
    /// The reciprocal of the (power-of-two) scale, the clip bounds (infinite for none) and the
    /// multiplier (one for none): exact identities when absent.
    pre: [T; 4],
    /// Params, square_avg, grad_avg, momentum_buffer (`Buffer16` order).
    keys: [u32; 4],
    /// The low 32 bits of the first element's index.
    base: u32,
}

/// The per-vector constants of a pass.
struct Splat<S: Simd, T: Element> {
    inv: T::Vector<S>,
    lo: T::Vector<S>,
    hi: T::Vector<S>,
    mul: T::Vector<S>,
    keys: [S::u32s; 4],
    zero: T::Vector<S>,
}

#[inline(always)]
fn ld<S: Simd, T: Element, const F: u8>(simd: S, n: &[T], h: &[u16], i: usize) -> T::Vector<S> {
    let w = T::lanes::<S>();
    if F == N {
        load_native::<S, T>(&n[i..i + w])
    } else if F == B {
        widen_bf16::<S, T>(simd, widen_u16::<S>(&h[i..i + w]))
    } else {
        widen_f16::<S, T>(simd, widen_u16::<S>(&h[i..i + w]))
    }
}

#[inline(always)]
fn st<S: Simd, T: Element, const F: u8, const SR: bool>(
    simd: S,
    d: &mut Rw<'_, T>,
    i: usize,
    v: T::Vector<S>,
    key: S::u32s,
    idx: S::u32s,
) {
    let w = T::lanes::<S>();
    if F == N {
        store_native::<S, T>(v, &mut d.n[i..i + w]);
        return;
    }
    let x = T::to_f32s::<S>(v);
    // No closure for the random words: a closure is not inlined into pulp's target-feature
    // context.
    let bits = match (F == B, SR) {
        (true, false) => bf16_rne(simd, x),
        (true, true) => bf16_sr(simd, x, lowbias32(simd, simd.xor_u32s(idx, key))),
        (false, false) => f16_rne(simd, x),
        (false, true) => f16_sr(simd, x, lowbias32(simd, simd.xor_u32s(idx, key))),
    };
    narrow_u16::<S>(bits, &mut d.h[i..i + w]);
}

/// `2w` bf16 values from `h[i..]` (one load) as two vectors, exact: the even-indexed elements
/// (the low halves of the 32-bit lanes, shifted up) and the odd-indexed ones (the high halves,
/// masked).
#[inline(always)]
fn ld_pair<S: Simd, T: Element>(simd: S, h: &[u16], i: usize) -> (T::Vector<S>, T::Vector<S>) {
    let w = core::mem::size_of::<S::u32s>() / 4;
    let x: S::u32s = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&h[i..i + 2 * w]));
    let even = simd.wrapping_dyn_shl_u32s(x, simd.splat_u32s(16));
    let odd = simd.and_u32s(x, simd.splat_u32s(0xFFFF_0000));
    (
        T::from_f32s::<S>(simd.transmute_f32s_u32s(even)),
        T::from_f32s::<S>(simd.transmute_f32s_u32s(odd)),
    )
}

/// The stochastic-rounding counters (not yet hashed) of the even and odd elements `ie`, `io`
/// under `key`; `None` for nearest-even.
#[inline(always)]
fn counters<S: Simd, const SR: bool>(
    simd: S,
    ie: S::u32s,
    io: S::u32s,
    key: S::u32s,
) -> Option<(S::u32s, S::u32s)> {
    if SR {
        Some((simd.xor_u32s(ie, key), simd.xor_u32s(io, key)))
    } else {
        None
    }
}

/// The interleaving of `vcvtne2ps2bf16`'s halves: lane `2k` from the low half's `k`, `2k + 1`
/// from the high half's.
#[cfg(target_arch = "x86_64")]
const INTERLEAVE: [u16; 32] = {
    let mut t = [0u16; 32];
    let mut k = 0;
    while k < 16 {
        t[2 * k] = k as u16;
        t[2 * k + 1] = 16 + k as u16;
        k += 1;
    }
    t
};

/// The even and odd elements `e`, `o` rounded to bf16 (nearest-even, or stochastic from the
/// counters `r`) and interleaved into `d` (`2w` values): `d[2k]` from `e[k]`, `d[2k + 1]` from
/// `o[k]`; the same bits as [`bf16_rne`] / [`bf16_sr`] lane by lane.
#[inline(always)]
fn bf16_interleaved<S: Simd>(
    simd: S,
    e: S::f32s,
    o: S::f32s,
    r: Option<(S::u32s, S::u32s)>,
    d: &mut [u16],
) {
    let (re, ro) = match r {
        Some((a, b)) => (Some(lowbias32(simd, a)), Some(lowbias32(simd, b))),
        None => (None, None),
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(&v4) = (&simd as &dyn core::any::Any).downcast_ref::<pulp::x86::V4>() {
        let c = bytemuck::cast::<S::f32s, pulp::f32x16>;
        let cu = bytemuck::cast::<S::u32s, pulp::u32x16>;
        if let (Some(re), Some(ro)) = (re, ro) {
            // Stochastic: lane k's low half is `e[k]`'s, its high half `o[k]`'s: interleaved.
            if let Some(out) = sr_pair_m512(v4, c(e), c(o), cu(re), cu(ro)) {
                let out: [u16; 32] = pulp::cast(out);
                d[..32].copy_from_slice(&out);
                return;
            }
        } else if let Some(h) = cvt_pair_m512(v4, c(e), c(o)) {
            let out = v4
                .avx512bw
                ._mm512_permutexvar_epi16(pulp::cast(INTERLEAVE), h);
            let out: [u16; 32] = pulp::cast(out);
            d[..32].copy_from_slice(&out);
            return;
        }
    }
    let lo = simd.and_u32s(round_bf16(simd, e, re), simd.splat_u32s(0xFFFF));
    let hi = simd.wrapping_dyn_shl_u32s(round_bf16(simd, o, ro), simd.splat_u32s(16));
    let bits = simd.or_u32s(lo, hi);
    let n = core::mem::size_of::<S::u32s>() / 2;
    bytemuck::cast_slice_mut::<u16, u8>(&mut d[..n]).copy_from_slice(bytemuck::bytes_of(&bits));
}

/// Stochastic rounding of `x` and `y` to bf16 with the random words `rx`, `ry`, by integer
/// arithmetic alone, as [`bf16_sr`] (subnormals included): `(bits + (r & 0xFFFF)) >> 16`, lane
/// `k` of the result holding `x[k]`'s bf16 in its low half and `y[k]`'s in its high half (the
/// interleaved order). `None` if a lane is past the largest finite bf16 (or infinite, or NaN):
/// those round to nearest-even instead.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sr_pair_m512(
    simd: pulp::x86::V4,
    x: pulp::f32x16,
    y: pulp::f32x16,
    rx: pulp::u32x16,
    ry: pulp::u32x16,
) -> Option<core::arch::x86_64::__m512i> {
    use pulp::cast;
    let f = simd.avx512f;
    let (ux, uy): (pulp::u32x16, pulp::u32x16) = (cast(x), cast(y));
    let abs = simd.splat_u32s(0x7FFF_FFFF);
    let max = cast(simd.splat_u32s(0x7F7F_0000));
    let big_x = f._mm512_cmpgt_epu32_mask(cast(simd.and_u32s(ux, abs)), max);
    let big_y = f._mm512_cmpgt_epu32_mask(cast(simd.and_u32s(uy, abs)), max);
    if big_x | big_y != 0 {
        return None;
    }
    // No carry reaches the sign: `|x| <= 0x7F7F_0000`, so `|x| + 0xFFFF < 2^31`.
    let low = simd.splat_u32s(0xFFFF);
    let tx = simd.add_u32s(ux, simd.and_u32s(rx, low));
    let ty = simd.add_u32s(uy, simd.and_u32s(ry, low));
    // 0xCA is `a ? b : c` bit by bit: `y`'s results in the high halves, `x`'s (shifted down)
    // in the low ones.
    Some(f._mm512_ternarylogic_epi32::<0xCA>(
        cast(simd.splat_u32s(0xFFFF_0000)),
        cast(ty),
        f._mm512_srli_epi32::<16>(cast(tx)),
    ))
}

/// The inverse of [`INTERLEAVE`]: the even 16-bit lanes, then the odd ones.
#[cfg(target_arch = "x86_64")]
const DEINTERLEAVE: [u16; 32] = {
    let mut t = [0u16; 32];
    let mut k = 0;
    while k < 16 {
        t[k] = 2 * k as u16;
        t[16 + k] = 2 * k as u16 + 1;
        k += 1;
    }
    t
};

/// Two vectors rounded to bf16 (nearest-even, or stochastic from the counters `rx`, `ry`) into
/// `dx` and `dy` (one vector's worth each), the same bits as [`bf16_rne`] / [`bf16_sr`]: on
/// AVX-512, nearest-even through `vcvtne2ps2bf16` (callers pass [`CVT`] only where the CPU has
/// AVX512-BF16) and stochastic by [`sr_pair_m512`]; elsewhere lane by lane.
#[inline(always)]
fn bf16_pair<S: Simd>(
    simd: S,
    x: S::f32s,
    y: S::f32s,
    rx: Option<S::u32s>,
    ry: Option<S::u32s>,
    dx: &mut [u16],
    dy: &mut [u16],
) {
    let rx = rx.map(|r| lowbias32(simd, r));
    let ry = ry.map(|r| lowbias32(simd, r));
    #[cfg(target_arch = "x86_64")]
    if let Some(&v4) = (&simd as &dyn core::any::Any).downcast_ref::<pulp::x86::V4>() {
        let c = bytemuck::cast::<S::f32s, pulp::f32x16>;
        let cu = bytemuck::cast::<S::u32s, pulp::u32x16>;
        #[inline(always)]
        fn split(h: core::arch::x86_64::__m512i, dx: &mut [u16], dy: &mut [u16]) {
            let h: [u16; 32] = pulp::cast(h);
            dx[..16].copy_from_slice(&h[..16]);
            dy[..16].copy_from_slice(&h[16..]);
        }
        // (No closures: see `st`.)
        if let (Some(rx), Some(ry)) = (rx, ry) {
            if let Some(h) = sr_pair_m512(v4, c(x), c(y), cu(rx), cu(ry)) {
                // Interleaved; the permutation puts `x`'s 16 results first.
                let h = v4
                    .avx512bw
                    ._mm512_permutexvar_epi16(pulp::cast(DEINTERLEAVE), h);
                return split(h, dx, dy);
            }
        } else if let Some(h) = cvt_pair_m512(v4, c(x), c(y)) {
            return split(h, dx, dy);
        }
    }
    narrow_u16::<S>(round_bf16(simd, x, rx), dx);
    narrow_u16::<S>(round_bf16(simd, y, ry), dy);
}

#[inline(always)]
fn round_bf16<S: Simd>(simd: S, x: S::f32s, r: Option<S::u32s>) -> S::u32s {
    match r {
        Some(r) => bf16_sr(simd, x, r),
        None => bf16_rne(simd, x),
    }
}

/// `x` and `y` through `vcvtne2ps2bf16` (nearest-even); `None` if a lane is subnormal (the
/// instruction would flush it).
/// (Not inlined in unoptimised builds, as `crate::sqrt`'s AVX-512 path: stack frames.)
#[cfg(target_arch = "x86_64")]
#[cfg_attr(not(debug_assertions), inline(always))]
fn cvt_pair_m512(
    simd: pulp::x86::V4,
    x: pulp::f32x16,
    y: pulp::f32x16,
) -> Option<core::arch::x86_64::__m512i> {
    use pulp::cast;
    let f = simd.avx512dq;
    // fpclass 0x20: denormal.
    let sub = f._mm512_fpclass_ps_mask::<0x20>(cast(x)) | f._mm512_fpclass_ps_mask::<0x20>(cast(y));
    if sub != 0 {
        return None;
    }
    // SAFETY: `V4` proves AVX-512F; `CVT` (the only way here) is set only when the CPU has
    // AVX512-BF16 (`bf16_instruction`).
    #[allow(unsafe_code)]
    Some(unsafe { vcvtne2ps2bf16(cast(y), cast(x)) })
}

/// `vcvtne2ps2bf16 out, hi, lo`: `lo` in the low 16 bf16 lanes of `out`, `hi` in the high 16,
/// nearest-even, NaN quieted as `(bits >> 16) | 0x40`, subnormal inputs flushed to zero.
/// (Inline assembly: the intrinsic needs the `avx512bf16` target feature, which pulp's
/// AVX-512 context does not enable, and would not be inlined into it.)
///
/// # Safety
/// The CPU must support AVX512-BF16 (and AVX-512F).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn vcvtne2ps2bf16(
    hi: core::arch::x86_64::__m512,
    lo: core::arch::x86_64::__m512,
) -> core::arch::x86_64::__m512i {
    let out;
    // SAFETY: the caller guarantees AVX512-BF16; the instruction only reads and writes the
    // three registers.
    unsafe {
        core::arch::asm!(
            "vcvtne2ps2bf16 {out}, {hi}, {lo}",
            out = lateout(zmm_reg) out,
            hi = in(zmm_reg) hi,
            lo = in(zmm_reg) lo,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// Whether this CPU has AVX512-BF16 (the `CVT` loops), unless turned off by
/// [`crate::__testing::set_bf16_instruction`].
pub(crate) fn bf16_instruction() -> bool {
    use core::sync::atomic::Ordering::Relaxed;
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let has = std::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    let has = false;
    has && !NO_BF16_INSTRUCTION.load(Relaxed)
}

/// Set by tests to run the integer rounding on a CPU with AVX512-BF16.
pub(crate) static NO_BF16_INSTRUCTION: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

impl<
        T: Element,
        const P: u8,
        const G: u8,
        const V: u8,
        const C: u8,
        const SR: bool,
        const X: u8,
    > Fused<'_, T, P, G, V, C, SR, X>
{
    /// The first `len` elements of every buffer. The slices a format says are present are cut
    /// unconditionally, so the compiler knows their length is `len`.
    #[inline(always)]
    fn head(&mut self, len: usize) -> Fused<'_, T, P, G, V, C, SR, X> {
        Fused {
            p: self.p.head_of::<P>(len),
            g: self.g.head_of::<G>(len),
            v: self.v.head_of::<V>(len),
            a: self.a.head(len),
            b: self.b.head(len),
            c: if C == N {
                Rw {
                    n: &mut [],
                    h: &mut [],
                }
            } else {
                self.c.head_of::<C>(len)
            },
            pre: self.pre,
            keys: self.keys,
            base: self.base,
        }
    }

    /// Prefetches every buffer of the pass [`crate::kernel::PREFETCH_BYTES`] past element `i`.
    #[inline(always)]
    fn prefetch<S: Simd, R: VectorRule<S, T>>(&self, i: usize) {
        fn one<T, const F: u8>(n: &[T], h: &[u16], i: usize) {
            if F == N {
                prefetch(n, i)
            } else {
                prefetch(h, i)
            }
        }
        one::<T, P>(self.p.n, self.p.h, i);
        one::<T, G>(self.g.n, self.g.h, i);
        one::<T, V>(self.v.n, self.v.h, i);
        if R::GA {
            one::<T, V>(self.a.n, self.a.h, i);
        }
        if R::B {
            one::<T, V>(self.b.n, self.b.h, i);
        }
        if C != N {
            one::<T, C>(self.c.n, self.c.h, i);
        }
    }

    /// The gradient pre-processing (scale, clamp, multiply), or nothing without [`PRE`].
    #[inline(always)]
    fn pre<S: Simd>(simd: S, k: &Splat<S, T>, g: T::Vector<S>) -> T::Vector<S> {
        if X & PRE != 0 {
            T::vmul(
                simd,
                T::vclamp(simd, T::vmul(simd, g, k.inv), k.lo, k.hi),
                k.mul,
            )
        } else {
            g
        }
    }

    /// All-bf16: the `2w` elements at `i` as two vectors, the even-indexed elements and the
    /// odd-indexed ones ([`ld_pair`]), stepped (not yet stored).
    #[inline(always)]
    fn step_pair<S: Simd, R: VectorRule<S, T>>(
        &self,
        simd: S,
        rule: &R,
        k: &Splat<S, T>,
        i: usize,
    ) -> [Updated<T::Vector<S>>; 2] {
        let (g0, g1) = ld_pair::<S, T>(simd, self.g.h, i);
        let (g0, g1) = (Self::pre(simd, k, g0), Self::pre(simd, k, g1));
        let (p0, p1) = ld_pair::<S, T>(simd, self.p.h, i);
        let (v0, v1) = ld_pair::<S, T>(simd, self.v.h, i);
        let (a0, a1) = if R::GA {
            ld_pair::<S, T>(simd, self.a.h, i)
        } else {
            (k.zero, k.zero)
        };
        let (b0, b1) = if R::B {
            ld_pair::<S, T>(simd, self.b.h, i)
        } else {
            (k.zero, k.zero)
        };
        [
            rule.step(simd, p0, g0, v0, a0, b0),
            rule.step(simd, p1, g1, v1, a1, b1),
        ]
    }

    /// All-bf16: rounds and stores a pair stepped by [`Self::step_pair`] at `i`, whose element
    /// indices are `idx + iota` (so `2k` from `i` in lane `k` of the even vector, `2k + 1` in the
    /// odd one).
    #[inline(always)]
    fn store_pair<S: Simd, R: VectorRule<S, T>>(
        &mut self,
        simd: S,
        k: &Splat<S, T>,
        i: usize,
        idx: S::u32s,
        iota: S::u32s,
        [e, o]: [Updated<T::Vector<S>>; 2],
    ) {
        // One buffer's pair: a plain `fn`, as closures are not inlined into pulp's
        // target-feature context.
        #[inline(always)]
        fn one<S: Simd, T: Element, const SR: bool>(
            simd: S,
            (e, o): (T::Vector<S>, T::Vector<S>),
            (ie, io, key): (S::u32s, S::u32s, S::u32s),
            d: &mut [u16],
        ) {
            let (e, o) = (T::to_f32s::<S>(e), T::to_f32s::<S>(o));
            bf16_interleaved(simd, e, o, counters::<S, SR>(simd, ie, io, key), d);
        }
        let w2 = 2 * T::lanes::<S>();
        let ie = simd.add_u32s(idx, iota);
        let io = simd.add_u32s(ie, simd.splat_u32s(1));
        let [kp, kv, ka, kb] = k.keys;
        one::<S, T, SR>(simd, (e.0, o.0), (ie, io, kp), &mut self.p.h[i..i + w2]);
        one::<S, T, SR>(simd, (e.1, o.1), (ie, io, kv), &mut self.v.h[i..i + w2]);
        if R::GA {
            one::<S, T, SR>(simd, (e.2, o.2), (ie, io, ka), &mut self.a.h[i..i + w2]);
        }
        if R::B {
            one::<S, T, SR>(simd, (e.3, o.3), (ie, io, kb), &mut self.b.h[i..i + w2]);
        }
    }

    /// All-bf16 with AVX512-BF16: the first `n / 2w * 2w` elements, a pair of vectors per load
    /// (one 64-byte load per buffer split into even and odd elements by a shift and a mask,
    /// instead of two widening loads; one rounding instruction and one permutation per buffer
    /// and pair). Returns how many elements it stepped; `idx` is advanced past them.
    #[inline(always)]
    fn drive_pairs<S: Simd, R: VectorRule<S, T>>(
        &mut self,
        simd: S,
        rule: &R,
        k: &Splat<S, T>,
        n: usize,
        idx: &mut S::u32s,
        iota: S::u32s,
    ) -> usize {
        let w2 = 2 * T::lanes::<S>();
        let done = n / w2 * w2;
        if done == 0 {
            return 0;
        }
        let step = simd.splat_u32s(w2 as u32);
        let mut head = self.head(done);
        // Software-pipelined as the loop of single vectors (`drive`).
        let mut out = head.step_pair(simd, rule, k, 0);
        let mut i = w2;
        while i + w2 <= done {
            head.prefetch::<S, R>(i);
            let next = head.step_pair(simd, rule, k, i);
            head.store_pair::<S, R>(simd, k, i - w2, *idx, iota, out);
            out = next;
            *idx = simd.add_u32s(*idx, step);
            i += w2;
        }
        head.store_pair::<S, R>(simd, k, done - w2, *idx, iota, out);
        *idx = simd.add_u32s(*idx, step);
        done
    }

    /// The vector at `i`, stepped (not yet stored).
    #[inline(always)]
    fn step<S: Simd, R: VectorRule<S, T>>(
        &self,
        simd: S,
        rule: &R,
        k: &Splat<S, T>,
        i: usize,
    ) -> Updated<T::Vector<S>> {
        let g = Self::pre(simd, k, ld::<S, T, G>(simd, self.g.n, self.g.h, i));
        let p = ld::<S, T, P>(simd, self.p.n, self.p.h, i);
        let v = ld::<S, T, V>(simd, self.v.n, self.v.h, i);
        let ga = if R::GA {
            ld::<S, T, V>(simd, self.a.n, self.a.h, i)
        } else {
            k.zero
        };
        let b = if R::B {
            ld::<S, T, V>(simd, self.b.n, self.b.h, i)
        } else {
            k.zero
        };
        rule.step(simd, p, g, v, ga, b)
    }

    /// Rounds and stores a stepped vector at `i` (element indices `idx`).
    #[inline(always)]
    fn store<S: Simd, R: VectorRule<S, T>>(
        &mut self,
        simd: S,
        k: &Splat<S, T>,
        i: usize,
        idx: S::u32s,
        (p, v, ga, b): Updated<T::Vector<S>>,
    ) {
        if X & CVT != 0 && P == B && V == B {
            // All bf16: params with square_avg, grad_avg with momentum_buffer.
            let w = T::lanes::<S>();
            let r = |key: S::u32s| SR.then(|| simd.xor_u32s(idx, key));
            let (p, v) = (T::to_f32s::<S>(p), T::to_f32s::<S>(v));
            let (rp, rv) = (r(k.keys[0]), r(k.keys[1]));
            bf16_pair(
                simd,
                p,
                v,
                rp,
                rv,
                &mut self.p.h[i..i + w],
                &mut self.v.h[i..i + w],
            );
            if R::GA || R::B {
                let (ga, b) = (T::to_f32s::<S>(ga), T::to_f32s::<S>(b));
                let (ra, rb) = (r(k.keys[2]), r(k.keys[3]));
                let mut none = [0u16; MAX_LANES];
                let da = if R::GA {
                    &mut self.a.h[i..i + w]
                } else {
                    &mut none[..w]
                };
                let mut none = [0u16; MAX_LANES];
                let db = if R::B {
                    &mut self.b.h[i..i + w]
                } else {
                    &mut none[..w]
                };
                bf16_pair(simd, ga, b, ra, rb, da, db);
            }
            return;
        }
        st::<S, T, P, SR>(simd, &mut self.p, i, p, k.keys[0], idx);
        if X & CVT != 0 && C == B {
            // The bf16 copy through the instruction (the second half is dropped).
            let w = T::lanes::<S>();
            let x = T::to_f32s::<S>(p);
            let mut none = [0u16; MAX_LANES];
            bf16_pair(
                simd,
                x,
                x,
                None,
                None,
                &mut self.c.h[i..i + w],
                &mut none[..w],
            );
        } else if C != N {
            st::<S, T, C, false>(simd, &mut self.c, i, p, k.keys[0], idx);
        }
        st::<S, T, V, SR>(simd, &mut self.v, i, v, k.keys[1], idx);
        if R::GA {
            st::<S, T, V, SR>(simd, &mut self.a, i, ga, k.keys[2], idx);
        }
        if R::B {
            st::<S, T, V, SR>(simd, &mut self.b, i, b, k.keys[3], idx);
        }
    }
}

impl<
        T: Element,
        const P: u8,
        const G: u8,
        const V: u8,
        const C: u8,
        const SR: bool,
        const X: u8,
    > Drive<T> for Fused<'_, T, P, G, V, C, SR, X>
{
    #[inline(always)]
    fn drive<S: Simd, R: VectorRule<S, T>>(mut self, simd: S, rule: &R) {
        let splat = |x: T| T::splat(simd, x);
        let k = Splat::<S, T> {
            inv: splat(self.pre[0]),
            lo: splat(self.pre[1]),
            hi: splat(self.pre[2]),
            mul: splat(self.pre[3]),
            keys: self.keys.map(|key| simd.splat_u32s(key)),
            zero: splat(T::zero()),
        };
        let w = T::lanes::<S>();
        let u32_lanes = core::mem::size_of::<S::u32s>() / 4;
        let iota: S::u32s = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&IOTA[..u32_lanes]));
        let step = simd.splat_u32s(w as u32);
        let mut idx = simd.add_u32s(simd.splat_u32s(self.base), iota);
        // The params' one non-empty slice.
        let n = self.p.n.len() + self.p.h.len();
        let full = n / w * w;
        // Software-pipelined: vector i is rounded and stored after vector i + 1 is stepped, so
        // the rounding of a result that waits on the divider does not fill the scheduler ahead
        // of the next vector's loads (a plain loop ran at half the speed).
        let start = if X & CVT != 0 && P == B && G == B && V == B && C == N {
            self.drive_pairs::<S, R>(simd, rule, &k, n, &mut idx, iota)
        } else {
            0
        };
        if full > start {
            // Every buffer cut to exactly `full`, and the loop condition the bounds check's own
            // (`i + w <= full`): the compiler drops the per-buffer checks from the loop.
            let mut head = self.head(full);
            let mut out = head.step(simd, rule, &k, start);
            let mut i = start + w;
            while i + w <= full {
                head.prefetch::<S, R>(i);
                let next = head.step(simd, rule, &k, i);
                head.store::<S, R>(simd, &k, i - w, idx, out);
                out = next;
                idx = simd.add_u32s(idx, step);
                i += w;
            }
            head.store::<S, R>(simd, &k, full - w, idx, out);
            idx = simd.add_u32s(idx, step);
        }
        if full < n {
            // The tail (shorter than one vector): the same step on a padded copy.
            let mut pads = [(); 6].map(|_| Pad::new());
            let [pp, pg, pv, pa, pb, pc] = &mut pads;
            let mut tail = Fused::<'_, T, P, G, V, C, SR, X> {
                p: self.p.pad(full, w, pp),
                g: Ro {
                    n: pad_tail(self.g.n, full, w, &mut pg.n),
                    h: pad_tail(self.g.h, full, w, &mut pg.h),
                },
                v: self.v.pad(full, w, pv),
                a: self.a.pad(full, w, pa),
                b: self.b.pad(full, w, pb),
                c: self.c.pad(full, w, pc),
                pre: self.pre,
                keys: self.keys,
                base: 0,
            };
            let out = tail.step(simd, rule, &k, 0);
            tail.store::<S, R>(simd, &k, 0, idx, out);
            self.p.unpad(full, pp);
            self.v.unpad(full, pv);
            self.a.unpad(full, pa);
            self.b.unpad(full, pb);
            self.c.unpad(full, pc);
        }
    }
}

/// Runs `bufs` (one 2^32-index key range) through the fused loop if the backend is AVX-512 or
/// AVX2, the rule PyTorch's, the scale a power of two (or none) and the shape one of the compiled
/// ones; otherwise hands the buffers back (to the staged pass).
// The buffers go back by value (boxing them would allocate per step, and no_std has no Box).
#[allow(clippy::result_large_err)]
pub(crate) fn try_run<'a, T: Element>(
    backend: crate::Backend,
    k: Coefficients<T>,
    bufs: MixedBuffers<'a, T>,
) -> Result<(), MixedBuffers<'a, T>> {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        // `f64` steps only native buffers (the plain kernel's path unless options are given):
        // the staged pass serves them, and no fused loop is compiled for them.
        let Some(&k32) = (&k as &dyn core::any::Any).downcast_ref::<Coefficients<f32>>() else {
            return Err(bufs);
        };
        if k32.rule != Rule::PyTorch || matches!(bufs.prep.scale, Scale::Div(_)) {
            return Err(bufs);
        }
        if let Some(simd) = backend.avx512_token() {
            run_avx512(simd, k32, recast::<T, f32>(bufs)).map_err(recast::<f32, T>)
        } else if let Some(simd) = backend.avx2_token() {
            run_avx2(simd, k32, recast::<T, f32>(bufs)).map_err(recast::<f32, T>)
        } else {
            Err(bufs)
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        let _ = (backend, k);
        Err(bufs)
    }
}

/// The same buffers with another element type of the same size (`f32` as `f32`: the identity).
fn recast<'a, A: Element, B: Element>(bufs: MixedBuffers<'a, A>) -> MixedBuffers<'a, B> {
    let dst = |d: Dst<'a, A>| match d {
        Dst::Native(s) => Dst::Native(bytemuck::cast_slice_mut::<A, B>(s)),
        Dst::Bf16(s) => Dst::Bf16(s),
        Dst::F16(s) => Dst::F16(s),
    };
    let x = |v: A| B::from_f64(v.to_f64());
    let prep = bufs.prep;
    MixedBuffers {
        params: dst(bufs.params),
        grads: match bufs.grads {
            Src::Native(s) => Src::Native(bytemuck::cast_slice::<A, B>(s)),
            Src::Bf16(s) => Src::Bf16(s),
            Src::F16(s) => Src::F16(s),
        },
        square_avg: dst(bufs.square_avg),
        grad_avg: bufs.grad_avg.map(dst),
        momentum_buffer: bufs.momentum_buffer.map(dst),
        copy: bufs.copy.map(dst),
        prep: Prep {
            scale: match prep.scale {
                Scale::None => Scale::None,
                Scale::Mul(m) => Scale::Mul(x(m)),
                Scale::Div(d) => Scale::Div(x(d)),
            },
            divisor: x(prep.divisor),
            clip: prep.clip.map(x),
            multiplier: prep.multiplier.map(x),
            rounding: prep.rounding,
        },
        offset: bufs.offset,
    }
}

/// The fused loops on AVX-512, compiled once in this crate (not generic: a crate that steps does
/// not compile them again). Hands the buffers back if their shape is not a compiled one.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(never)]
#[allow(clippy::result_large_err)]
fn run_avx512(
    simd: pulp::x86::V4,
    k: Coefficients<f32>,
    bufs: MixedBuffers<'_, f32>,
) -> Result<(), MixedBuffers<'_, f32>> {
    run_fused::<_, true>(simd, k, bufs)
}

/// [`run_avx512`] on AVX2 + FMA.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[inline(never)]
#[allow(clippy::result_large_err)]
fn run_avx2(
    simd: pulp::x86::V3,
    k: Coefficients<f32>,
    bufs: MixedBuffers<'_, f32>,
) -> Result<(), MixedBuffers<'_, f32>> {
    run_fused::<_, false>(simd, k, bufs)
}

#[inline(always)]
#[allow(clippy::result_large_err)]
fn run_fused<S: Simd, const WITH_CVT: bool>(
    simd: S,
    k: Coefficients<f32>,
    bufs: MixedBuffers<'_, f32>,
) -> Result<(), MixedBuffers<'_, f32>> {
    type T = f32;
    let prep = bufs.prep;
    let inv = match prep.scale {
        Scale::Mul(m) => m,
        Scale::None | Scale::Div(_) => 1.0,
    };
    let pre = [
        inv,
        prep.clip.map_or(f32::NEG_INFINITY, |c| -c),
        prep.clip.unwrap_or(f32::INFINITY),
        prep.multiplier.unwrap_or(1.0),
    ];
    let p = format(&bufs.params);
    let v = format(&bufs.square_avg);
    let g = match bufs.grads {
        Src::Native(_) => N,
        Src::Bf16(_) => B,
        Src::F16(_) => H,
    };
    let c = bufs.copy.as_ref().map_or(N, format);
    // grad_avg and momentum_buffer share square_avg's format.
    let a = bufs.grad_avg.as_ref().map(format);
    let b = bufs.momentum_buffer.as_ref().map(format);
    if a.is_some_and(|f| f != v) || b.is_some_and(|f| f != v) {
        return Err(bufs);
    }
    // Stochastic rounding matters only where params or state are 16-bit (a copy is rounded
    // to nearest-even).
    let (sr, keys) = match prep.stream_keys(bufs.offset) {
        Some(keys) if p != N || v != N => (true, keys),
        _ => (false, [0; 4]),
    };
    let base = bufs.offset as u32;
    let pre_flag = if pre == [1.0, f32::NEG_INFINITY, f32::INFINITY, 1.0] {
        0
    } else {
        PRE
    };
    // The conversion instruction: AVX-512 only (`WITH_CVT`: AVX2's loops do not compile the
    // branches that use it).
    let cvt = if WITH_CVT && bf16_instruction() {
        CVT
    } else {
        0
    };
    macro_rules! go {
        // The loop for the flags of this pass.
        (@flags $p:ident, $g:ident, $v:ident, $c:ident, $sr:literal) => {
            match pre_flag | cvt {
                0 => go!($p, $g, $v, $c, $sr, 0),
                PRE => go!($p, $g, $v, $c, $sr, PRE),
                CVT if WITH_CVT => go!($p, $g, $v, $c, $sr, CVT),
                _ if WITH_CVT => go!($p, $g, $v, $c, $sr, PRE | CVT),
                // (Not reached: `cvt` is zero without `WITH_CVT`; the general loop is right.)
                _ => go!($p, $g, $v, $c, $sr, PRE),
            }
        };
        ($p:ident, $g:ident, $v:ident, $c:ident, $sr:literal) => {
            go!($p, $g, $v, $c, $sr, PRE)
        };
        ($p:ident, $g:ident, $v:ident, $c:ident, $sr:literal, $x:expr) => {{
            let MixedBuffers {
                params,
                grads,
                square_avg,
                grad_avg,
                momentum_buffer,
                copy,
                ..
            } = bufs;
            let g = match grads {
                Src::Native(n) => Ro { n, h: &[] },
                Src::Bf16(h) | Src::F16(h) => Ro { n: &[], h },
            };
            pytorch_per_variant(
                simd,
                &k,
                Fused::<'_, T, $p, $g, $v, $c, $sr, { $x }> {
                    p: rw(Some(params)),
                    g,
                    v: rw(Some(square_avg)),
                    a: rw(grad_avg),
                    b: rw(momentum_buffer),
                    c: rw(copy),
                    pre,
                    keys,
                    base,
                },
            );
            Ok(())
        }};
    }
    match (p, g, v, c, sr) {
        // Low precision: bf16 params and gradients, bf16 or f32 state; all-bf16 without the
        // pre-processing's identities, and with the conversion instruction where there is one.
        (B, B, B, N, false) => go!(@flags B, B, B, N, false),
        (B, B, B, N, true) => go!(@flags B, B, B, N, true),
        (B, B, N, N, false) => go!(B, B, N, N, false),
        (B, B, N, N, true) => go!(B, B, N, N, true),
        // Master weights: f32 params and state, 16-bit gradients, an optional 16-bit copy.
        (N, B, N, N, false) => match pre_flag {
            0 => go!(N, B, N, N, false, 0),
            _ => go!(N, B, N, N, false, PRE),
        },
        (N, B, N, B, false) => go!(@flags N, B, N, B, false),
        (N, H, N, H, false) => go!(N, H, N, H, false),
        _ => Err(bufs),
    }
}
