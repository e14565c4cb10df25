//! The fused mixed loop: for the storage shapes training uses, PyTorch's rule and AVX-512 or
//! AVX2, each vector is loaded (widened from 16-bit storage), its gradient pre-processed,
//! stepped and rounded back in registers, so the conversions overlap the divider instead of
//! adding to it (all-bf16 at 3e7 elements on AVX-512: 1.35x the f32 kernel's elements per
//! second, against 0.74x staged; on AVX2 about 1.5x the staged pass in L2).
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
use crate::kernel::{pytorch_per_variant, Drive, Updated, VectorRule};
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

impl<T: Copy> Rw<'_, T> {
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
/// grad_avg, momentum_buffer), `C` (the params copy; `N` for none) and stochastic rounding `SR`.
pub(crate) struct Fused<'a, T, const P: u8, const G: u8, const V: u8, const C: u8, const SR: bool> {
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

impl<T: Element, const P: u8, const G: u8, const V: u8, const C: u8, const SR: bool>
    Fused<'_, T, P, G, V, C, SR>
{
    /// The vector at `i`, stepped (not yet stored).
    #[inline(always)]
    fn step<S: Simd, R: VectorRule<S, T>>(
        &self,
        simd: S,
        rule: &R,
        k: &Splat<S, T>,
        i: usize,
    ) -> Updated<T::Vector<S>> {
        let g = ld::<S, T, G>(simd, self.g.n, self.g.h, i);
        let g = T::vmul(
            simd,
            T::vclamp(simd, T::vmul(simd, g, k.inv), k.lo, k.hi),
            k.mul,
        );
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
        st::<S, T, P, SR>(simd, &mut self.p, i, p, k.keys[0], idx);
        if C != N {
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

impl<T: Element, const P: u8, const G: u8, const V: u8, const C: u8, const SR: bool> Drive<T>
    for Fused<'_, T, P, G, V, C, SR>
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
        if full > 0 {
            let mut out = self.step(simd, rule, &k, 0);
            let mut i = w;
            while i < full {
                let next = self.step(simd, rule, &k, i);
                self.store::<S, R>(simd, &k, i - w, idx, out);
                out = next;
                idx = simd.add_u32s(idx, step);
                i += w;
            }
            self.store::<S, R>(simd, &k, full - w, idx, out);
            idx = simd.add_u32s(idx, step);
        }
        if full < n {
            // The tail (shorter than one vector): the same step on a padded copy.
            let mut pads = [(); 6].map(|_| Pad::new());
            let [pp, pg, pv, pa, pb, pc] = &mut pads;
            let mut tail = Fused::<'_, T, P, G, V, C, SR> {
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
    run_fused(simd, k, bufs)
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
    run_fused(simd, k, bufs)
}

#[inline(always)]
#[allow(clippy::result_large_err)]
fn run_fused<S: Simd>(
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
    macro_rules! go {
        ($p:ident, $g:ident, $v:ident, $c:ident, $sr:literal) => {{
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
                Fused::<'_, T, $p, $g, $v, $c, $sr> {
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
        // Low precision: bf16 params and gradients, bf16 or f32 state.
        (B, B, B, N, false) => go!(B, B, B, N, false),
        (B, B, B, N, true) => go!(B, B, B, N, true),
        (B, B, N, N, false) => go!(B, B, N, N, false),
        (B, B, N, N, true) => go!(B, B, N, N, true),
        // Master weights: f32 params and state, 16-bit gradients, an optional 16-bit copy.
        (N, B, N, N, false) => go!(N, B, N, N, false),
        (N, B, N, B, false) => go!(N, B, N, B, false),
        (N, H, N, H, false) => go!(N, H, N, H, false),
        _ => Err(bufs),
    }
}
