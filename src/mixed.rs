//! The mixed pass: the same rule types as the plain kernel (`kernel.rs`), over buffers whose
//! storage may be 16-bit, with the gradient pre-processing of [`crate::StepOptions`] and the
//! rounding of [`crate::Rounding`] fused in.
//!
//! The loop takes one vector of elements at a time, every buffer in memory order. A 16-bit chunk
//! is zero-extended into a vector of `u32` lanes (a fixed-length array copy that LLVM compiles to
//! `vpmovzxwd`/`uxtl`) and converted with pulp's portable integer operations (bf16 by shifts;
//! f16 by ryg's branch-free algorithms, with no subnormal `f32` inputs or outputs, so FTZ/DAZ do
//! not change them); results go back the same way (`vpmovdw`/`xtn`). The conversions equal
//! [`crate::storage`]'s scalar specification bit for bit.
use crate::kernel::{Driver, VectorRule};
use crate::storage::{stream_key, Buffer16, Rounding};
use crate::Element;
use pulp::Simd;

/// A read-only buffer of the pass.
pub(crate) enum Src<'a, T> {
    Native(&'a [T]),
    Bf16(&'a [u16]),
    F16(&'a [u16]),
}

/// A buffer the pass writes.
pub(crate) enum Dst<'a, T> {
    Native(&'a mut [T]),
    Bf16(&'a mut [u16]),
    F16(&'a mut [u16]),
}

impl<'a, T> Src<'a, T> {
    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            Src::Native(s) => {
                let (a, b) = s.split_at(mid);
                (Src::Native(a), Src::Native(b))
            }
            Src::Bf16(s) => {
                let (a, b) = s.split_at(mid);
                (Src::Bf16(a), Src::Bf16(b))
            }
            Src::F16(s) => {
                let (a, b) = s.split_at(mid);
                (Src::F16(a), Src::F16(b))
            }
        }
    }
}

impl<'a, T> Dst<'a, T> {
    fn len(&self) -> usize {
        match self {
            Dst::Native(s) => s.len(),
            Dst::Bf16(s) | Dst::F16(s) => s.len(),
        }
    }

    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            Dst::Native(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Dst::Native(a), Dst::Native(b))
            }
            Dst::Bf16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Dst::Bf16(a), Dst::Bf16(b))
            }
            Dst::F16(s) => {
                let (a, b) = s.split_at_mut(mid);
                (Dst::F16(a), Dst::F16(b))
            }
        }
    }
}

fn split_opt<'a, T>(d: Option<Dst<'a, T>>, mid: usize) -> (Option<Dst<'a, T>>, Option<Dst<'a, T>>) {
    match d {
        Some(d) => {
            let (a, b) = d.split_at(mid);
            (Some(a), Some(b))
        }
        None => (None, None),
    }
}

/// How the gradient is scaled before clamping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scale<T> {
    /// As it is.
    None,
    /// Multiplied by the exact reciprocal of a power-of-two scale (the same bits as dividing).
    Mul(T),
    /// Divided by the scale.
    Div(T),
}

/// The gradient pre-processing and rounding of a pass, in the compute type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Prep<T> {
    pub scale: Scale<T>,
    /// `grad_scale` in the compute type (what the specification divides by).
    pub divisor: T,
    pub clip: Option<T>,
    pub multiplier: Option<T>,
    pub rounding: Rounding,
}

impl<T: Element> Prep<T> {
    /// The scalar specification of the gradient pre-processing (the reference's).
    #[inline]
    pub fn apply(&self, g: T) -> T {
        let g = match self.scale {
            Scale::None => g,
            // The specification divides; `Mul` is only chosen when it gives the same bits.
            Scale::Mul(_) | Scale::Div(_) => g / self.divisor,
        };
        let g = match self.clip {
            Some(c) if g > c => c,
            Some(c) if g < -c => -c,
            _ => g,
        };
        match self.multiplier {
            Some(m) => g * m,
            None => g,
        }
    }
}

/// The buffers of a mixed pass. `offset` is the index of the first element in the whole buffer
/// (the stochastic rounding's counter).
pub(crate) struct MixedBuffers<'a, T> {
    pub params: Dst<'a, T>,
    pub grads: Src<'a, T>,
    pub square_avg: Dst<'a, T>,
    pub grad_avg: Option<Dst<'a, T>>,
    pub momentum_buffer: Option<Dst<'a, T>>,
    pub copy: Option<Dst<'a, T>>,
    pub prep: Prep<T>,
    pub offset: u64,
}

impl<T: Element> Driver<T> for MixedBuffers<'_, T> {
    fn len(&self) -> usize {
        self.params.len()
    }

    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p0, p1) = self.params.split_at(mid);
        let (g0, g1) = self.grads.split_at(mid);
        let (v0, v1) = self.square_avg.split_at(mid);
        let (a0, a1) = split_opt(self.grad_avg, mid);
        let (b0, b1) = split_opt(self.momentum_buffer, mid);
        let (c0, c1) = split_opt(self.copy, mid);
        (
            MixedBuffers {
                params: p0,
                grads: g0,
                square_avg: v0,
                grad_avg: a0,
                momentum_buffer: b0,
                copy: c0,
                prep: self.prep,
                offset: self.offset,
            },
            MixedBuffers {
                params: p1,
                grads: g1,
                square_avg: v1,
                grad_avg: a1,
                momentum_buffer: b1,
                copy: c1,
                prep: self.prep,
                offset: self.offset + mid as u64,
            },
        )
    }

    #[inline(always)]
    fn drive<S: Simd, R: VectorRule<S, T>>(self, simd: S, rule: &R) {
        drive_mixed(simd, self, rule)
    }
}

/// The splatted constants of a pass.
struct Consts<S: Simd, T: Element> {
    scale: Scale<T::Vector<S>>,
    clip: Option<(T::Vector<S>, T::Vector<S>)>,
    multiplier: Option<T::Vector<S>>,
    /// Stream keys of params, square_avg, grad_avg, momentum_buffer (stochastic rounding only).
    keys: Option<[S::u32s; 4]>,
    /// `0, 1, 2, ...`: the indices of a chunk.
    iota: S::u32s,
    zero: T::Vector<S>,
}

/// The widest vector of `u32` lanes (AVX-512).
const MAX_LANES: usize = 16;

/// `0, 1, 2, ...`, the lane indices of a chunk.
const IOTA: [u32; MAX_LANES] = {
    let mut a = [0u32; MAX_LANES];
    let mut i = 0;
    while i < MAX_LANES {
        a[i] = i as u32;
        i += 1;
    }
    a
};

#[inline(always)]
fn drive_mixed<S: Simd, T: Element, R: VectorRule<S, T>>(
    simd: S,
    bufs: MixedBuffers<'_, T>,
    rule: &R,
) {
    let n = bufs.len();
    if n == 0 {
        return;
    }
    // The random key covers 2^32 indices: a pass that crosses such a boundary is cut there.
    let stochastic = matches!(bufs.prep.rounding, Rounding::Stochastic { .. });
    if stochastic && (bufs.offset >> 32) != ((bufs.offset + n as u64 - 1) >> 32) {
        let mid = ((1u64 << 32) - (bufs.offset & 0xFFFF_FFFF)) as usize;
        let (a, b) = bufs.split_at(mid);
        drive_mixed(simd, a, rule);
        drive_mixed(simd, b, rule);
        return;
    }

    let w = T::lanes::<S>();
    let splat = |x: T| T::splat(simd, x);
    let u32_lanes = core::mem::size_of::<S::u32s>() / 4;
    let consts = Consts::<S, T> {
        scale: match bufs.prep.scale {
            Scale::None => Scale::None,
            Scale::Mul(m) => Scale::Mul(splat(m)),
            Scale::Div(d) => Scale::Div(splat(d)),
        },
        clip: bufs.prep.clip.map(|c| (splat(-c), splat(c))),
        multiplier: bufs.prep.multiplier.map(splat),
        keys: match bufs.prep.rounding {
            Rounding::Stochastic { seed, step } => {
                let hi = (bufs.offset >> 32) as u32;
                let key = |b| simd.splat_u32s(stream_key(seed, step, b, hi));
                Some([
                    key(Buffer16::Params),
                    key(Buffer16::SquareAvg),
                    key(Buffer16::GradAvg),
                    key(Buffer16::MomentumBuffer),
                ])
            }
            Rounding::NearestEven => None,
        },
        iota: bytemuck::pod_read_unaligned(bytemuck::cast_slice(&IOTA[..u32_lanes])),
        zero: splat(T::zero()),
    };

    let full = n / w * w;
    let base = bufs.offset as u32;
    let mut bufs = bufs;
    let mut i = 0;
    while i < full {
        chunk(simd, rule, &consts, &mut bufs, i, w, base.wrapping_add(i as u32));
        i += w;
    }
    if full < n {
        tail(simd, rule, &consts, bufs, full, w, base.wrapping_add(full as u32));
    }
}

/// The last `len - from` (< `w`) elements: copied into padded local buffers, stepped as a whole
/// chunk (the padding's results are discarded), copied back.
#[inline(always)]
fn tail<S: Simd, T: Element, R: VectorRule<S, T>>(
    simd: S,
    rule: &R,
    consts: &Consts<S, T>,
    bufs: MixedBuffers<'_, T>,
    from: usize,
    w: usize,
    base: u32,
) {
    let n = bufs.len() - from;
    let mut locals: [Local<T>; 6] = Default::default();
    let [lp, lg, lv, la, lb, lc] = &mut locals;
    let MixedBuffers {
        params,
        grads,
        square_avg,
        grad_avg,
        momentum_buffer,
        copy,
        prep,
        offset,
    } = bufs;
    let mut params = params;
    let mut square_avg = square_avg;
    let mut grad_avg = grad_avg;
    let mut momentum_buffer = momentum_buffer;
    let mut copy = copy;
    let mut local = MixedBuffers {
        params: lp.dst(&params, from, w),
        grads: lg.src(&grads, from, w),
        square_avg: lv.dst(&square_avg, from, w),
        grad_avg: grad_avg.as_ref().map(|d| la.dst(d, from, w)),
        momentum_buffer: momentum_buffer.as_ref().map(|d| lb.dst(d, from, w)),
        copy: copy.as_ref().map(|d| lc.dst(d, from, w)),
        prep,
        offset,
    };
    chunk(simd, rule, consts, &mut local, 0, w, base);
    copy_back(&local.params, &mut params, from, n);
    copy_back(&local.square_avg, &mut square_avg, from, n);
    if let (Some(l), Some(d)) = (&local.grad_avg, &mut grad_avg) {
        copy_back(l, d, from, n);
    }
    if let (Some(l), Some(d)) = (&local.momentum_buffer, &mut momentum_buffer) {
        copy_back(l, d, from, n);
    }
    if let (Some(l), Some(d)) = (&local.copy, &mut copy) {
        copy_back(l, d, from, n);
    }
}

/// A padded local copy of a buffer's tail (either format).
struct Local<T> {
    t: [T; 64],
    u: [u16; 64],
}

impl<T: Element> Default for Local<T> {
    fn default() -> Self {
        Local {
            t: [T::zero(); 64],
            u: [0; 64],
        }
    }
}

impl<T: Element> Local<T> {
    fn dst(&mut self, d: &Dst<'_, T>, from: usize, w: usize) -> Dst<'_, T> {
        match d {
            Dst::Native(s) => {
                let n = s.len() - from;
                self.t[..n].copy_from_slice(&s[from..]);
                Dst::Native(&mut self.t[..w])
            }
            Dst::Bf16(s) | Dst::F16(s) => {
                let n = s.len() - from;
                self.u[..n].copy_from_slice(&s[from..]);
                match d {
                    Dst::Bf16(_) => Dst::Bf16(&mut self.u[..w]),
                    _ => Dst::F16(&mut self.u[..w]),
                }
            }
        }
    }

    fn src(&mut self, d: &Src<'_, T>, from: usize, w: usize) -> Src<'_, T> {
        match d {
            Src::Native(s) => {
                let n = s.len() - from;
                self.t[..n].copy_from_slice(&s[from..]);
                Src::Native(&self.t[..w])
            }
            Src::Bf16(s) | Src::F16(s) => {
                let n = s.len() - from;
                self.u[..n].copy_from_slice(&s[from..]);
                match d {
                    Src::Bf16(_) => Src::Bf16(&self.u[..w]),
                    _ => Src::F16(&self.u[..w]),
                }
            }
        }
    }
}

fn copy_back<T: Copy>(local: &Dst<'_, T>, d: &mut Dst<'_, T>, from: usize, n: usize) {
    match (local, d) {
        (Dst::Native(l), Dst::Native(d)) => d[from..from + n].copy_from_slice(&l[..n]),
        (Dst::Bf16(l) | Dst::F16(l), Dst::Bf16(d) | Dst::F16(d)) => {
            d[from..from + n].copy_from_slice(&l[..n])
        }
        _ => {}
    }
}

/// One chunk of `w = lanes` elements at `i`, `base` the (low 32 bits of the) index of its first
/// element.
#[inline(always)]
fn chunk<S: Simd, T: Element, R: VectorRule<S, T>>(
    simd: S,
    rule: &R,
    c: &Consts<S, T>,
    b: &mut MixedBuffers<'_, T>,
    i: usize,
    w: usize,
    base: u32,
) {
    let g = prep(simd, c, load_src(simd, &b.grads, i, w));
    let p = load_dst(simd, &b.params, i, w);
    let v = load_dst(simd, &b.square_avg, i, w);
    let a = match &b.grad_avg {
        Some(d) if R::GA => load_dst(simd, d, i, w),
        _ => c.zero,
    };
    let m = match &b.momentum_buffer {
        Some(d) if R::B => load_dst(simd, d, i, w),
        _ => c.zero,
    };
    let (p, v, a, m) = rule.step(simd, p, g, v, a, m);

    let idx = simd.add_u32s(simd.splat_u32s(base), c.iota);
    let key = |k: usize| c.keys.map(|keys| keys[k]);
    store_dst(simd, &mut b.params, i, w, p, key(0), idx);
    store_dst(simd, &mut b.square_avg, i, w, v, key(1), idx);
    if R::GA {
        if let Some(d) = &mut b.grad_avg {
            store_dst(simd, d, i, w, a, key(2), idx);
        }
    }
    if R::B {
        if let Some(d) = &mut b.momentum_buffer {
            store_dst(simd, d, i, w, m, key(3), idx);
        }
    }
    if let Some(d) = &mut b.copy {
        store_dst(simd, d, i, w, p, None, idx);
    }
}

#[inline(always)]
fn prep<S: Simd, T: Element>(simd: S, c: &Consts<S, T>, g: T::Vector<S>) -> T::Vector<S> {
    let g = match c.scale {
        Scale::None => g,
        Scale::Mul(m) => T::vmul(simd, g, m),
        Scale::Div(d) => T::vdiv(simd, g, d),
    };
    let g = match c.clip {
        Some((lo, hi)) => T::vclamp(simd, g, lo, hi),
        None => g,
    };
    match c.multiplier {
        Some(m) => T::vmul(simd, g, m),
        None => g,
    }
}

/// `s` (one vector's worth of 16-bit values) zero-extended to `u32` lanes, in order.
#[inline(always)]
fn widen_u16<S: Simd>(s: &[u16]) -> S::u32s {
    let mut lanes = [0u32; MAX_LANES];
    for (l, &x) in lanes.iter_mut().zip(s) {
        *l = x as u32;
    }
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(&lanes[..s.len()]))
}

/// The low 16 bits of each `u32` lane of `v`, in order, into `s` (one vector's worth).
#[inline(always)]
fn narrow_u16<S: Simd>(v: S::u32s, s: &mut [u16]) {
    let mut lanes = [0u32; MAX_LANES];
    let n = s.len();
    bytemuck::cast_slice_mut::<u32, u8>(&mut lanes[..n]).copy_from_slice(bytemuck::bytes_of(&v));
    for (x, &l) in s.iter_mut().zip(&lanes) {
        *x = l as u16;
    }
}

#[inline(always)]
fn load_native<S: Simd, T: Element>(s: &[T]) -> T::Vector<S> {
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(s))
}

#[inline(always)]
fn load_src<S: Simd, T: Element>(simd: S, s: &Src<'_, T>, i: usize, w: usize) -> T::Vector<S> {
    match s {
        Src::Native(s) => load_native::<S, T>(&s[i..i + w]),
        Src::Bf16(s) => widen_bf16::<S, T>(simd, widen_u16::<S>(&s[i..i + w])),
        Src::F16(s) => widen_f16::<S, T>(simd, widen_u16::<S>(&s[i..i + w])),
    }
}

#[inline(always)]
fn load_dst<S: Simd, T: Element>(simd: S, s: &Dst<'_, T>, i: usize, w: usize) -> T::Vector<S> {
    match s {
        Dst::Native(s) => load_native::<S, T>(&s[i..i + w]),
        Dst::Bf16(s) => widen_bf16::<S, T>(simd, widen_u16::<S>(&s[i..i + w])),
        Dst::F16(s) => widen_f16::<S, T>(simd, widen_u16::<S>(&s[i..i + w])),
    }
}

#[inline(always)]
fn store_dst<S: Simd, T: Element>(
    simd: S,
    d: &mut Dst<'_, T>,
    i: usize,
    w: usize,
    v: T::Vector<S>,
    key: Option<S::u32s>,
    idx: S::u32s,
) {
    let x = T::to_f32s::<S>(v);
    let random = |key: S::u32s| lowbias32(simd, simd.xor_u32s(idx, key));
    match d {
        Dst::Native(s) => bytemuck::cast_slice_mut::<T, u8>(&mut s[i..i + w])
            .copy_from_slice(bytemuck::bytes_of(&v)),
        Dst::Bf16(s) => {
            let bits = match key {
                None => bf16_rne(simd, x),
                Some(key) => bf16_sr(simd, x, random(key)),
            };
            narrow_u16::<S>(bits, &mut s[i..i + w]);
        }
        Dst::F16(s) => {
            let bits = match key {
                None => f16_rne(simd, x),
                Some(key) => f16_sr(simd, x, random(key)),
            };
            narrow_u16::<S>(bits, &mut s[i..i + w]);
        }
    }
}

// ---- integer helpers (pulp has only variable shifts; a splatted count is one instruction) ----

#[inline(always)]
fn k<S: Simd>(simd: S, x: u32) -> S::u32s {
    simd.splat_u32s(x)
}
#[inline(always)]
fn shr<S: Simd>(simd: S, a: S::u32s, n: u32) -> S::u32s {
    simd.wrapping_dyn_shr_u32s(a, k(simd, n))
}
#[inline(always)]
fn shl<S: Simd>(simd: S, a: S::u32s, n: u32) -> S::u32s {
    simd.wrapping_dyn_shl_u32s(a, k(simd, n))
}
#[inline(always)]
fn and<S: Simd>(simd: S, a: S::u32s, m: u32) -> S::u32s {
    simd.and_u32s(a, k(simd, m))
}

/// `storage::lowbias32`, lane by lane.
#[inline(always)]
fn lowbias32<S: Simd>(simd: S, x: S::u32s) -> S::u32s {
    let x = simd.mul_u32s(simd.xor_u32s(x, shr(simd, x, 16)), k(simd, 0x7FEB_352D));
    let x = simd.mul_u32s(simd.xor_u32s(x, shr(simd, x, 15)), k(simd, 0x846C_A68B));
    simd.xor_u32s(x, shr(simd, x, 16))
}

/// bf16 bits (one per `u32` lane) to `f32`: exact.
#[inline(always)]
fn widen_bf16<S: Simd, T: Element>(simd: S, x: S::u32s) -> T::Vector<S> {
    T::from_f32s::<S>(simd.transmute_f32s_u32s(shl(simd, x, 16)))
}

/// f16 bits (one per `u32` lane) to `f32`: exact.
#[inline(always)]
fn widen_f16<S: Simd, T: Element>(simd: S, x: S::u32s) -> T::Vector<S> {
    T::from_f32s::<S>(f16_to_f32(simd, x))
}

/// One f16 per lane (in the low 16 bits) to `f32` (ryg's `half_to_float_fast5`).
#[inline(always)]
fn f16_to_f32<S: Simd>(simd: S, h: S::u32s) -> S::f32s {
    let sign = shl(simd, and(simd, h, 0x8000), 16);
    let o = shl(simd, and(simd, h, 0x7FFF), 13);
    let exp = and(simd, o, 0x0F80_0000);
    let o = simd.add_u32s(o, k(simd, 112 << 23));
    // Inf/NaN: exponent 31 -> 255 (the payload is kept).
    let o = simd.select_u32s(
        simd.equal_u32s(exp, k(simd, 0x0F80_0000)),
        simd.add_u32s(o, k(simd, 112 << 23)),
        o,
    );
    // Zero/subnormal: 2^-14 * (1 + m/1024) - 2^-14 = m * 2^-24, exact and normal in f32.
    let sub = simd.sub_f32s(
        simd.transmute_f32s_u32s(simd.add_u32s(o, k(simd, 1 << 23))),
        simd.transmute_f32s_u32s(k(simd, 113 << 23)),
    );
    let o = simd.select_u32s(
        simd.equal_u32s(exp, k(simd, 0)),
        simd.transmute_u32s_f32s(sub),
        o,
    );
    simd.transmute_f32s_u32s(simd.or_u32s(o, sign))
}

/// `f32` to bf16, nearest-even (as `half::bf16::from_f32`, NaN made quiet with its payload).
#[inline(always)]
fn bf16_rne<S: Simd>(simd: S, x: S::f32s) -> S::u32s {
    let u = simd.transmute_u32s_f32s(x);
    let a = and(simd, u, 0x7FFF_FFFF);
    let odd = and(simd, shr(simd, u, 16), 1);
    let rne = shr(
        simd,
        simd.add_u32s(simd.add_u32s(u, k(simd, 0x7FFF)), odd),
        16,
    );
    let nan = simd.or_u32s(shr(simd, u, 16), k(simd, 0x40));
    simd.select_u32s(simd.greater_than_u32s(a, k(simd, 0x7F80_0000)), nan, rne)
}

/// `storage::bf16_stochastic`, lane by lane.
#[inline(always)]
fn bf16_sr<S: Simd>(simd: S, x: S::f32s, r: S::u32s) -> S::u32s {
    let u = simd.transmute_u32s_f32s(x);
    let a = and(simd, u, 0x7FFF_FFFF);
    let sr = shr(simd, simd.add_u32s(u, and(simd, r, 0xFFFF)), 16);
    simd.select_u32s(
        simd.greater_than_u32s(a, k(simd, 0x7F7F_0000)),
        bf16_rne(simd, x),
        sr,
    )
}

/// `f32` to f16, nearest-even (ryg's `float_to_half_fast3_rtne`; NaN as F16C and `half` give
/// it: quiet, the payload's upper bits kept).
#[inline(always)]
fn f16_rne<S: Simd>(simd: S, x: S::f32s) -> S::u32s {
    let u = simd.transmute_u32s_f32s(x);
    let sign = shr(simd, and(simd, u, 0x8000_0000), 16);
    let a = and(simd, u, 0x7FFF_FFFF);
    // Overflow, Inf, NaN.
    let nan = simd.or_u32s(k(simd, 0x7E00), and(simd, shr(simd, a, 13), 0x3FF));
    let big = simd.select_u32s(
        simd.greater_than_u32s(a, k(simd, 0x7F80_0000)),
        nan,
        k(simd, 0x7C00),
    );
    // Subnormal results: the FPU rounds `a + 0.5` at the f16 subnormal spacing.
    let sub = simd.sub_u32s(
        simd.transmute_u32s_f32s(simd.add_f32s(
            simd.transmute_f32s_u32s(a),
            simd.transmute_f32s_u32s(k(simd, 126 << 23)),
        )),
        k(simd, 126 << 23),
    );
    // Normal results: rebias and round to nearest-even on the integer.
    let mant_odd = and(simd, shr(simd, a, 13), 1);
    let normal = shr(
        simd,
        simd.add_u32s(
            simd.add_u32s(a, k(simd, 0xC800_0FFF)), // ((15 - 127) << 23) + 0xFFF, wrapping
            mant_odd,
        ),
        13,
    );
    let o = simd.select_u32s(
        simd.less_than_u32s(a, k(simd, 0x3880_0000)),
        sub,
        normal,
    );
    let o = simd.select_u32s(
        simd.greater_than_or_equal_u32s(a, k(simd, 0x4780_0000)),
        big,
        o,
    );
    simd.or_u32s(o, sign)
}

/// `storage::f16_stochastic`, lane by lane.
#[inline(always)]
fn f16_sr<S: Simd>(simd: S, x: S::f32s, r: S::u32s) -> S::u32s {
    let u = simd.transmute_u32s_f32s(x);
    let sign = shr(simd, and(simd, u, 0x8000_0000), 16);
    let a = and(simd, u, 0x7FFF_FFFF);
    let normal = simd.sub_u32s(
        shr(simd, simd.add_u32s(a, and(simd, r, 0x1FFF)), 13),
        k(simd, 112 << 10),
    );
    // Subnormal range: significand m and shift s to units of 2^-24 (only meaningful there;
    // elsewhere the lanes compute something harmless that the selects drop).
    let e = shr(simd, a, 23);
    let e_zero = simd.equal_u32s(e, k(simd, 0));
    let m = simd.select_u32s(e_zero, a, simd.or_u32s(and(simd, a, 0x7F_FFFF), k(simd, 0x80_0000)));
    let s = simd.select_u32s(e_zero, k(simd, 125), simd.sub_u32s(k(simd, 126), e));
    let s1 = simd.min_u32s(s, k(simd, 31));
    let q1 = simd.wrapping_dyn_shr_u32s(
        simd.add_u32s(m, simd.wrapping_dyn_shr_u32s(r, simd.sub_u32s(k(simd, 32), s1))),
        s1,
    );
    let pre = simd.min_u32s(simd.sub_u32s(s, k(simd, 31)), k(simd, 31));
    let q2 = shr(
        simd,
        simd.add_u32s(simd.wrapping_dyn_shr_u32s(m, pre), shr(simd, r, 1)),
        31,
    );
    let sub = simd.select_u32s(simd.greater_than_u32s(s, k(simd, 31)), q2, q1);
    let o = simd.select_u32s(simd.less_than_u32s(a, k(simd, 0x3880_0000)), sub, normal);
    let o = simd.or_u32s(o, sign);
    simd.select_u32s(
        simd.greater_than_u32s(a, k(simd, 0x477F_E000)),
        f16_rne(simd, x),
        o,
    )
}
