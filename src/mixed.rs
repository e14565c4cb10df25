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
use crate::kernel::{Buffers, Pass, Piece};
use crate::storage::{stream_key, Buffer16, Rounding};
use crate::{Coefficients, Element};
use pulp::{Simd, WithSimd};

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

impl<'a, T> Dst<'a, T> {
    /// The 16-bit params copy as the buffer the pass writes it to.
    pub(crate) fn copy(c: crate::ParamsCopy<'a>) -> Self {
        match c {
            crate::ParamsCopy::Bf16(s) => Dst::Bf16(bytemuck::cast_slice_mut(s)),
            crate::ParamsCopy::F16(s) => Dst::F16(bytemuck::cast_slice_mut(s)),
        }
    }
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
    pub(crate) fn len(&self) -> usize {
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
    /// The stochastic rounding's stream keys of params, square_avg, grad_avg and
    /// momentum_buffer (`Buffer16` order) for the 2^32-index range holding element `offset`;
    /// `None` under nearest-even.
    pub fn stream_keys(&self, offset: u64) -> Option<[u32; 4]> {
        match self.rounding {
            Rounding::Stochastic { seed, step } => {
                let hi = (offset >> 32) as u32;
                Some(
                    [
                        Buffer16::Params,
                        Buffer16::SquareAvg,
                        Buffer16::GradAvg,
                        Buffer16::MomentumBuffer,
                    ]
                    .map(|b| stream_key(seed, step, b, hi)),
                )
            }
            Rounding::NearestEven => None,
        }
    }

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

impl<T: Element> Piece<T> for MixedBuffers<'_, T> {
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

    fn run(self, backend: crate::Backend, k: Coefficients<T>) {
        // The random key covers 2^32 indices: a pass that crosses such a boundary is cut there.
        let stochastic = matches!(self.prep.rounding, Rounding::Stochastic { .. });
        let mut bufs = self;
        loop {
            let n = bufs.len() as u64;
            let (this, rest) =
                if stochastic && n > 0 && (bufs.offset >> 32) != ((bufs.offset + n - 1) >> 32) {
                    let mid = ((1u64 << 32) - (bufs.offset & 0xFFFF_FFFF)) as usize;
                    let (a, b) = bufs.split_at(mid);
                    (a, Some(b))
                } else {
                    (bufs, None)
                };
            // The fused loop for the common shapes; the staged pass for everything else.
            if let Err(this) = crate::fused::try_run(backend, k, this) {
                backend.vectorize(MixedPass { k, bufs: this });
            }
            match rest {
                Some(rest) => bufs = rest,
                None => return,
            }
        }
    }
}

/// One serial mixed pass, as a pulp operation: the staging is compiled once per backend and
/// element type; each block runs the plain kernel's pass (its rule dispatch costs a few branches
/// per block).
struct MixedPass<'a, T> {
    k: Coefficients<T>,
    bufs: MixedBuffers<'a, T>,
}

impl<T: Element> WithSimd for MixedPass<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        segment(simd, self.k, self.bufs)
    }
}

/// Elements per block: the unit of staging (16-bit and pre-processed buffers are widened into
/// stack arrays of this many compute-type elements, in L1).
const BLOCK: usize = 512;

/// The widest vector of `u32` lanes (AVX-512).
pub(crate) const MAX_LANES: usize = 16;

/// `0, 1, 2, ...`, the lane indices of a chunk.
pub(crate) const IOTA: [u32; MAX_LANES] = {
    let mut a = [0u32; MAX_LANES];
    let mut i = 0;
    while i < MAX_LANES {
        a[i] = i as u32;
        i += 1;
    }
    a
};

/// A buffer of the block being stepped: the caller's own slice when it is stored in the compute
/// type, else the stack array it was widened into.
#[inline(always)]
fn stage<'s, S: Simd, T: Element>(
    simd: S,
    d: &'s mut Dst<'_, T>,
    r: core::ops::Range<usize>,
    stack: &'s mut [T],
) -> &'s mut [T] {
    match d {
        Dst::Native(s) => &mut s[r],
        Dst::Bf16(s) => {
            simd.vectorize(Widen {
                src: Src::Bf16(&s[r]),
                out: &mut *stack,
                prep: None,
            });
            stack
        }
        Dst::F16(s) => {
            simd.vectorize(Widen {
                src: Src::F16(&s[r]),
                out: &mut *stack,
                prep: None,
            });
            stack
        }
    }
}

/// Rounds a staged block back into its 16-bit buffer (native buffers were stepped in place).
#[inline(always)]
fn unstage<S: Simd, T: Element>(
    simd: S,
    d: &mut Dst<'_, T>,
    r: core::ops::Range<usize>,
    stack: &[T],
    key: Option<u32>,
    base: u32,
) {
    let (dst, format) = match d {
        Dst::Native(_) => return,
        Dst::Bf16(s) => (&mut s[r], Half::Bf16),
        Dst::F16(s) => (&mut s[r], Half::F16),
    };
    simd.vectorize(Narrow {
        src: stack,
        dst,
        format,
        key,
        base,
    });
}

/// A pass within one 2^32-element key range: block by block, the 16-bit (and pre-processed)
/// buffers are widened into L1-resident arrays, the plain kernel's pass runs over the block,
/// and the results are rounded back. Each element is still read and written once in
/// memory; the conversions are their own pulp operations, compiled once per backend rather than
/// once per rule.
#[inline(always)]
fn segment<S: Simd, T: Element>(simd: S, k: Coefficients<T>, bufs: MixedBuffers<'_, T>) {
    let MixedBuffers {
        mut params,
        grads,
        mut square_avg,
        mut grad_avg,
        mut momentum_buffer,
        mut copy,
        prep,
        offset,
    } = bufs;
    let n = params.len();
    let keys = prep.stream_keys(offset);
    let key = |k: usize| keys.map(|keys| keys[k]);
    let plain_grads = prep.scale == Scale::None && prep.clip.is_none() && prep.multiplier.is_none();
    let mut sp = [T::zero(); BLOCK];
    let mut sg = [T::zero(); BLOCK];
    let mut sv = [T::zero(); BLOCK];
    let mut sa = [T::zero(); BLOCK];
    let mut sm = [T::zero(); BLOCK];
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let r = start..start + len;
        let base = (offset as u32).wrapping_add(start as u32);
        let g: &[T] = match &grads {
            Src::Native(s) if plain_grads => &s[r.clone()],
            g => {
                let src = match g {
                    Src::Native(s) => Src::Native(&s[r.clone()]),
                    Src::Bf16(s) => Src::Bf16(&s[r.clone()]),
                    Src::F16(s) => Src::F16(&s[r.clone()]),
                };
                simd.vectorize(Widen {
                    src,
                    out: &mut sg[..len],
                    prep: (!plain_grads).then_some(prep),
                });
                &sg[..len]
            }
        };
        {
            let p = stage(simd, &mut params, r.clone(), &mut sp[..len]);
            let v = stage(simd, &mut square_avg, r.clone(), &mut sv[..len]);
            let a: &mut [T] = match &mut grad_avg {
                Some(d) => stage(simd, d, r.clone(), &mut sa[..len]),
                None => &mut [],
            };
            let m: &mut [T] = match &mut momentum_buffer {
                Some(d) => stage(simd, d, r.clone(), &mut sm[..len]),
                None => &mut [],
            };
            simd.vectorize(Pass {
                k,
                bufs: Buffers {
                    params: &mut *p,
                    grads: g,
                    square_avg: v,
                    grad_avg: a,
                    momentum_buffer: m,
                },
            });
            if let Some(c) = &mut copy {
                unstage(simd, c, r.clone(), p, None, base);
            }
        }
        unstage(simd, &mut params, r.clone(), &sp[..len], key(0), base);
        unstage(simd, &mut square_avg, r.clone(), &sv[..len], key(1), base);
        if let Some(d) = &mut grad_avg {
            unstage(simd, d, r.clone(), &sa[..len], key(2), base);
        }
        if let Some(d) = &mut momentum_buffer {
            unstage(simd, d, r.clone(), &sm[..len], key(3), base);
        }
        start += len;
    }
}

/// The 16-bit formats.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    Bf16,
    F16,
}

/// Widens `src` into `out` (same length), applying the gradient pre-processing when given.
struct Widen<'a, T> {
    src: Src<'a, T>,
    out: &'a mut [T],
    prep: Option<Prep<T>>,
}

impl<T: Element> WithSimd for Widen<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Widen { src, out, prep } = self;
        let w = T::lanes::<S>();
        let splat = |x: T| T::splat(simd, x);
        let scale = prep.map_or(Scale::None, |p| match p.scale {
            Scale::None => Scale::None,
            Scale::Mul(m) => Scale::Mul(splat(m)),
            Scale::Div(d) => Scale::Div(splat(d)),
        });
        let clip = prep.and_then(|p| p.clip).map(|c| (splat(-c), splat(c)));
        let multiplier = prep.and_then(|p| p.multiplier).map(splat);
        // Plain functions, not closures: a closure is not inlined into pulp's target-feature
        // context (its intrinsics would become calls).
        let apply = Apply::<S, T> {
            scale,
            clip,
            multiplier,
        };
        let n = out.len();
        let full = n / w * w;
        // One loop per format (the match is outside the loops).
        macro_rules! each {
            ($s:ident, |$c:ident| $load:expr) => {{
                for i in (0..full).step_by(w) {
                    let $c = &$s[i..i + w];
                    let v = apply.run(simd, $load);
                    store_native::<S, T>(v, &mut out[i..i + w]);
                }
                if full < n {
                    let mut pad = [Default::default(); MAX_LANES * 2];
                    pad[..n - full].copy_from_slice(&$s[full..]);
                    let $c = &pad[..w];
                    let v = apply.run(simd, $load);
                    let mut tmp = [T::zero(); MAX_LANES * 2];
                    store_native::<S, T>(v, &mut tmp[..w]);
                    out[full..].copy_from_slice(&tmp[..n - full]);
                }
            }};
        }
        match src {
            Src::Native(s) => each!(s, |c| load_native::<S, T>(c)),
            Src::Bf16(s) => each!(s, |c| widen_bf16::<S, T>(simd, widen_u16::<S>(c))),
            Src::F16(s) => each!(s, |c| widen_f16::<S, T>(simd, widen_u16::<S>(c))),
        }
    }
}

/// The gradient pre-processing, splatted.
struct Apply<S: Simd, T: Element> {
    scale: Scale<T::Vector<S>>,
    clip: Option<(T::Vector<S>, T::Vector<S>)>,
    multiplier: Option<T::Vector<S>>,
}

impl<S: Simd, T: Element> Apply<S, T> {
    #[inline(always)]
    fn run(&self, simd: S, g: T::Vector<S>) -> T::Vector<S> {
        let g = match self.scale {
            Scale::None => g,
            Scale::Mul(m) => T::vmul(simd, g, m),
            Scale::Div(d) => T::vdiv(simd, g, d),
        };
        let g = match self.clip {
            Some((lo, hi)) => T::vclamp(simd, g, lo, hi),
            None => g,
        };
        match self.multiplier {
            Some(m) => T::vmul(simd, g, m),
            None => g,
        }
    }
}

/// Rounds `src` (compute type, `f32` in practice) into 16-bit `dst`, nearest-even or
/// stochastically with stream `key` (element `i` is index `base + i`).
struct Narrow<'a, T> {
    src: &'a [T],
    dst: &'a mut [u16],
    format: Half,
    key: Option<u32>,
    base: u32,
}

impl<T: Element> WithSimd for Narrow<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Narrow {
            src,
            dst,
            format,
            key,
            base,
        } = self;
        let w = T::lanes::<S>();
        let u32_lanes = core::mem::size_of::<S::u32s>() / 4;
        let iota: S::u32s = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&IOTA[..u32_lanes]));
        let step = simd.splat_u32s(w as u32);
        let mut idx = simd.add_u32s(simd.splat_u32s(base), iota);
        let key = key.map(|k| simd.splat_u32s(k));
        let n = src.len();
        let full = n / w * w;
        macro_rules! each {
            (|$x:ident, $idx:ident| $e:expr) => {{
                for i in (0..full).step_by(w) {
                    let $x = T::to_f32s::<S>(load_native::<S, T>(&src[i..i + w]));
                    let $idx = idx;
                    narrow_u16::<S>($e, &mut dst[i..i + w]);
                    idx = simd.add_u32s(idx, step);
                }
                if full < n {
                    let mut pad = [T::zero(); MAX_LANES * 2];
                    pad[..n - full].copy_from_slice(&src[full..]);
                    let $x = T::to_f32s::<S>(load_native::<S, T>(&pad[..w]));
                    let $idx = idx;
                    let mut tmp = [0u16; MAX_LANES * 2];
                    narrow_u16::<S>($e, &mut tmp[..w]);
                    dst[full..].copy_from_slice(&tmp[..n - full]);
                }
            }};
        }
        match (format, key) {
            (Half::Bf16, None) => each!(|x, _i| bf16_rne(simd, x)),
            (Half::Bf16, Some(key)) => {
                each!(|x, i| bf16_sr(simd, x, lowbias32(simd, simd.xor_u32s(i, key))))
            }
            (Half::F16, None) => each!(|x, _i| f16_rne(simd, x)),
            (Half::F16, Some(key)) => {
                each!(|x, i| f16_sr(simd, x, lowbias32(simd, simd.xor_u32s(i, key))))
            }
        }
    }
}

#[inline(always)]
pub(crate) fn store_native<S: Simd, T: Element>(v: T::Vector<S>, out: &mut [T]) {
    bytemuck::cast_slice_mut::<T, u8>(out).copy_from_slice(bytemuck::bytes_of(&v));
}

/// `s` (one vector's worth of 16-bit values) zero-extended to `u32` lanes, in order: a loop of
/// constant length (the lane count) that LLVM compiles to one `vpmovzxwd`.
#[inline(always)]
pub(crate) fn widen_u16<S: Simd>(s: &[u16]) -> S::u32s {
    let n = core::mem::size_of::<S::u32s>() / 4;
    let s = &s[..n];
    let mut lanes = [0u32; MAX_LANES];
    for k in 0..n {
        lanes[k] = s[k] as u32;
    }
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(&lanes[..n]))
}

/// The low 16 bits of each `u32` lane of `v`, in order, into `s` (one vector's worth).
#[inline(always)]
pub(crate) fn narrow_u16<S: Simd>(v: S::u32s, s: &mut [u16]) {
    let n = core::mem::size_of::<S::u32s>() / 4;
    let s = &mut s[..n];
    let mut lanes = [0u32; MAX_LANES];
    bytemuck::cast_slice_mut::<u32, u8>(&mut lanes[..n]).copy_from_slice(bytemuck::bytes_of(&v));
    for k in 0..n {
        s[k] = lanes[k] as u16;
    }
}

#[inline(always)]
pub(crate) fn load_native<S: Simd, T: Element>(s: &[T]) -> T::Vector<S> {
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(s))
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
pub(crate) fn lowbias32<S: Simd>(simd: S, x: S::u32s) -> S::u32s {
    let x = simd.mul_u32s(simd.xor_u32s(x, shr(simd, x, 16)), k(simd, 0x7FEB_352D));
    let x = simd.mul_u32s(simd.xor_u32s(x, shr(simd, x, 15)), k(simd, 0x846C_A68B));
    simd.xor_u32s(x, shr(simd, x, 16))
}

/// bf16 bits (one per `u32` lane) to `f32`: exact.
#[inline(always)]
pub(crate) fn widen_bf16<S: Simd, T: Element>(simd: S, x: S::u32s) -> T::Vector<S> {
    T::from_f32s::<S>(simd.transmute_f32s_u32s(shl(simd, x, 16)))
}

/// f16 bits (one per `u32` lane) to `f32`: exact.
#[inline(always)]
pub(crate) fn widen_f16<S: Simd, T: Element>(simd: S, x: S::u32s) -> T::Vector<S> {
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
pub(crate) fn bf16_rne<S: Simd>(simd: S, x: S::f32s) -> S::u32s {
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
pub(crate) fn bf16_sr<S: Simd>(simd: S, x: S::f32s, r: S::u32s) -> S::u32s {
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
pub(crate) fn f16_rne<S: Simd>(simd: S, x: S::f32s) -> S::u32s {
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
    let o = simd.select_u32s(simd.less_than_u32s(a, k(simd, 0x3880_0000)), sub, normal);
    let o = simd.select_u32s(
        simd.greater_than_or_equal_u32s(a, k(simd, 0x4780_0000)),
        big,
        o,
    );
    simd.or_u32s(o, sign)
}

/// `storage::f16_stochastic`, lane by lane.
#[inline(always)]
pub(crate) fn f16_sr<S: Simd>(simd: S, x: S::f32s, r: S::u32s) -> S::u32s {
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
    let m = simd.select_u32s(
        e_zero,
        a,
        simd.or_u32s(and(simd, a, 0x7F_FFFF), k(simd, 0x80_0000)),
    );
    let s = simd.select_u32s(e_zero, k(simd, 125), simd.sub_u32s(k(simd, 126), e));
    let s1 = simd.min_u32s(s, k(simd, 31));
    let q1 = simd.wrapping_dyn_shr_u32s(
        simd.add_u32s(
            m,
            simd.wrapping_dyn_shr_u32s(r, simd.sub_u32s(k(simd, 32), s1)),
        ),
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
