//! The fused SIMD kernel, written once over pulp's `Simd` and the element type.
//!
//! One loop (`drive`) walks the buffers; each semantics is a rule type (`PyTorch`, `Optax`,
//! `Keras`) implementing a per-vector update whose switches are const generics, so every
//! combination is its own branch-free loop. The runtime switches become const generics through
//! `with_consts!`, which generates the `2^n` instantiations: no case list is written by hand.
use crate::{Coefficients, Element, Rule};
use pulp::{Simd, WithSimd};

/// The buffers of one step, already validated: every present buffer has the length of `params`;
/// `grad_avg` / `momentum_buffer` are empty when the hyperparameters do not use them.
pub(crate) struct Buffers<'a, T> {
    pub params: &'a mut [T],
    pub grads: &'a [T],
    pub square_avg: &'a mut [T],
    pub grad_avg: &'a mut [T],
    pub momentum_buffer: &'a mut [T],
}

/// The work of one pass as threading sees it: the plain buffers ([`Buffers`], each element of
/// the compute type) or the mixed ones (`crate::mixed::MixedBuffers`: 16-bit storage, gradient
/// pre-processing, rounding). Threading cuts them with `split_at` and runs each piece with `run`.
pub(crate) trait Piece<T: Element>: Send + Sized {
    /// Elements.
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    fn len(&self) -> usize;
    /// Splits every buffer at `mid` (the second part knows where it starts).
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    fn split_at(self, mid: usize) -> (Self, Self);
    /// One serial pass with coefficients `k` on `backend`.
    fn run(self, backend: crate::Backend, k: Coefficients<T>);
}

impl<'a, T: Element> Piece<T> for Buffers<'a, T> {
    fn len(&self) -> usize {
        self.params.len()
    }

    fn run(self, backend: crate::Backend, k: Coefficients<T>) {
        backend.vectorize(Pass { k, bufs: self });
    }

    /// Splits every buffer at `mid` (absent, empty state buffers stay empty on both sides).
    fn split_at(self, mid: usize) -> (Buffers<'a, T>, Buffers<'a, T>) {
        fn split_opt<T>(s: &mut [T], mid: usize) -> (&mut [T], &mut [T]) {
            if s.is_empty() {
                (&mut [], &mut [])
            } else {
                s.split_at_mut(mid)
            }
        }
        let (p0, p1) = self.params.split_at_mut(mid);
        let (g0, g1) = self.grads.split_at(mid);
        let (v0, v1) = self.square_avg.split_at_mut(mid);
        let (a0, a1) = split_opt(self.grad_avg, mid);
        let (b0, b1) = split_opt(self.momentum_buffer, mid);
        (
            Buffers {
                params: p0,
                grads: g0,
                square_avg: v0,
                grad_avg: a0,
                momentum_buffer: b0,
            },
            Buffers {
                params: p1,
                grads: g1,
                square_avg: v1,
                grad_avg: a1,
                momentum_buffer: b1,
            },
        )
    }
}

/// How a pass walks its buffers: the loop around a rule's per-vector step. [`Buffers`] loads
/// and stores vectors of the compute type (`drive`); `crate::fused::Fused` widens 16-bit
/// storage, pre-processes gradients and rounds results inside the same loop.
pub(crate) trait Drive<T: Element> {
    /// Runs `rule` over every element.
    fn drive<S: Simd, R: VectorRule<S, T>>(self, simd: S, rule: &R);
}

impl<T: Element> Drive<T> for Buffers<'_, T> {
    #[inline(always)]
    fn drive<S: Simd, R: VectorRule<S, T>>(self, simd: S, rule: &R) {
        drive(simd, self, rule)
    }
}

/// One serial pass over `bufs` with coefficients `k`, as a pulp operation.
pub(crate) struct Pass<T, B> {
    pub k: Coefficients<T>,
    pub bufs: B,
}

/// Calls `$f::<$($ty),*, B1, B2, ...>($args)` with each runtime bool of `[$b1, $b2, ...]` turned
/// into a const generic argument, by generating the `2^n` branches.
macro_rules! with_consts {
    ([$($done:expr),*] [] $f:ident::<$($ty:ty),*>($($arg:expr),*)) => {
        $f::<$($ty),*, $({ $done }),*>($($arg),*)
    };
    ([$($done:expr),*] [$b:expr $(, $rest:expr)*] $f:ident::<$($ty:ty),*>($($arg:expr),*)) => {
        if $b {
            with_consts!([$($done,)* true] [$($rest),*] $f::<$($ty),*>($($arg),*))
        } else {
            with_consts!([$($done,)* false] [$($rest),*] $f::<$($ty),*>($($arg),*))
        }
    };
}

impl<T: Element, B: Drive<T>> WithSimd for Pass<T, B> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Pass { k, bufs } = self;
        match k.rule {
            Rule::PyTorch => pytorch_pass(simd, &k, bufs),
            Rule::Optax {
                eps_in_sqrt,
                nesterov,
                bias_correction,
            } => with_consts!(
                [] [k.centered, k.use_momentum, nesterov, eps_in_sqrt, bias_correction]
                run_optax::<S, T, B>(simd, &k, bufs)
            ),
            Rule::Keras => with_consts!(
                [] [k.centered, k.use_momentum, k.use_weight_decay]
                run_keras::<S, T, B>(simd, &k, bufs)
            ),
        }
    }
}

/// One serial pass of PyTorch's rule (whatever `k.rule` says), its switches made const.
#[inline(always)]
pub(crate) fn pytorch_pass<S: Simd, T: Element, B: Drive<T>>(
    simd: S,
    k: &Coefficients<T>,
    bufs: B,
) {
    with_consts!(
        [] [k.centered, k.use_momentum, k.use_weight_decay, k.maximize]
        run_pytorch::<S, T, B>(simd, k, bufs)
    )
}

/// PyTorch's rule over `bufs`, one pulp operation per rule variant: called outside pulp's
/// target-feature context, it picks the variant first and enters that context for it alone.
/// (One operation holding every variant, as [`Pass`] is, costs a stack frame the size of all of
/// them in an unoptimised build: megabytes for the fused 16-bit loops.)
pub(crate) fn pytorch_per_variant<S: Simd, T: Element, B: Drive<T>>(
    simd: S,
    k: &Coefficients<T>,
    bufs: B,
) {
    with_consts!(
        [] [k.centered, k.use_momentum, k.use_weight_decay, k.maximize]
        pytorch_variant::<S, T, B>(simd, k, bufs)
    )
}

fn pytorch_variant<
    S: Simd,
    T: Element,
    B: Drive<T>,
    const C: bool,
    const M: bool,
    const W: bool,
    const X: bool,
>(
    simd: S,
    k: &Coefficients<T>,
    bufs: B,
) {
    struct Variant<T, B, const C: bool, const M: bool, const W: bool, const X: bool> {
        k: Coefficients<T>,
        bufs: B,
    }
    impl<T: Element, B: Drive<T>, const C: bool, const M: bool, const W: bool, const X: bool>
        WithSimd for Variant<T, B, C, M, W, X>
    {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            run_pytorch::<S, T, B, C, M, W, X>(simd, &self.k, self.bufs)
        }
    }
    Simd::vectorize(simd, Variant::<T, B, C, M, W, X> { k: *k, bufs });
}

/// `(param, square_avg, grad_avg, momentum_buffer)` after one vector step.
pub(crate) type Updated<V> = (V, V, V, V);

/// A semantics' per-vector update, with its coefficients splatted once per pass. A trait method
/// (not a closure) so that `#[inline(always)]` keeps it inside pulp's target-feature context.
pub(crate) trait VectorRule<S: Simd, T: Element> {
    /// Reads and writes `grad_avg`.
    const GA: bool;
    /// Reads and writes `momentum_buffer`.
    const B: bool;
    fn step(
        &self,
        simd: S,
        p: T::Vector<S>,
        g: T::Vector<S>,
        v: T::Vector<S>,
        ga: T::Vector<S>,
        b: T::Vector<S>,
    ) -> Updated<T::Vector<S>>;
}

/// How far ahead of the element being stepped each stream is prefetched, in bytes.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const PREFETCH_BYTES: usize = 2048;

/// A hint to bring the cache line [`PREFETCH_BYTES`] past `s[i]` into the cache (on x86-64;
/// elsewhere nothing). The hardware prefetchers alone left the passes waiting on memory: with
/// it, at 3e7 elements on one thread, the f32 kernel moved about 10% more bytes per second and
/// the all-bf16 pass about 14% more (`roofline --mixed`, one run before and after).
#[inline(always)]
pub(crate) fn prefetch<X>(s: &[X], i: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = s
            .as_ptr()
            .wrapping_add(i)
            .cast::<i8>()
            .wrapping_add(PREFETCH_BYTES);
        // SAFETY: a prefetch is only a hint: it never faults and changes no architectural
        // state, so any address will do (`wrapping_add` needs none in bounds); SSE, the
        // instruction's feature, is part of x86-64.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, i);
}

/// The loop shared by every rule: `rule.step` on each full vector, then once on the tail
/// through partial loads and stores. `grad_avg` is read and written only when `R::GA`,
/// `momentum_buffer` only when `R::B` (otherwise they are empty and zero stands in).
#[inline(always)]
fn drive<S: Simd, T: Element, R: VectorRule<S, T>>(simd: S, bufs: Buffers<'_, T>, rule: &R) {
    let zero = T::splat(simd, T::zero());
    let (p_head, p_tail) = T::as_mut_simd::<S>(bufs.params);
    let (g_head, g_tail) = T::as_simd::<S>(bufs.grads);
    let (v_head, v_tail) = T::as_mut_simd::<S>(bufs.square_avg);
    let (ga_head, ga_tail) = T::as_mut_simd::<S>(bufs.grad_avg);
    let (b_head, b_tail) = T::as_mut_simd::<S>(bufs.momentum_buffer);

    // Re-slicing to the common length lets the compiler drop the bounds checks in the loop.
    let n = p_head.len();
    let g_head = &g_head[..n];
    let v_head = &mut v_head[..n];
    let ga_head = if R::GA { &mut ga_head[..n] } else { ga_head };
    let b_head = if R::B { &mut b_head[..n] } else { b_head };

    for i in 0..n {
        prefetch(p_head, i);
        prefetch(g_head, i);
        prefetch(v_head, i);
        if R::GA {
            prefetch(ga_head, i);
        }
        if R::B {
            prefetch(b_head, i);
        }
        let ga = if R::GA { ga_head[i] } else { zero };
        let b = if R::B { b_head[i] } else { zero };
        let (p, v, ga, b) = rule.step(simd, p_head[i], g_head[i], v_head[i], ga, b);
        p_head[i] = p;
        v_head[i] = v;
        if R::GA {
            ga_head[i] = ga;
        }
        if R::B {
            b_head[i] = b;
        }
    }

    // The tail (shorter than one vector) goes through the same per-vector step.
    if !p_tail.is_empty() {
        let ga = if R::GA {
            T::partial_load(simd, ga_tail)
        } else {
            zero
        };
        let b = if R::B {
            T::partial_load(simd, b_tail)
        } else {
            zero
        };
        let (p, v, ga, b) = rule.step(
            simd,
            T::partial_load(simd, p_tail),
            T::partial_load(simd, g_tail),
            T::partial_load(simd, v_tail),
            ga,
            b,
        );
        T::partial_store(simd, p_tail, p);
        T::partial_store(simd, v_tail, v);
        if R::GA {
            T::partial_store(simd, ga_tail, ga);
        }
        if R::B {
            T::partial_store(simd, b_tail, b);
        }
    }
}

/// PyTorch's step (see [`crate::reference`]), lane by lane.
struct PyTorch<V, const CENTERED: bool, const MOMENTUM: bool, const WD: bool, const MAX: bool> {
    alpha: V,
    c: V,
    c_minus_one: V,
    eps: V,
    wd: V,
    m: V,
    neg_lr: V,
    lerp_from_end: bool,
}

impl<S: Simd, T: Element, const C: bool, const M: bool, const W: bool, const X: bool>
    VectorRule<S, T> for PyTorch<T::Vector<S>, C, M, W, X>
{
    const GA: bool = C;
    const B: bool = M;

    #[inline(always)]
    fn step(
        &self,
        simd: S,
        p: T::Vector<S>,
        grad: T::Vector<S>,
        v: T::Vector<S>,
        ga: T::Vector<S>,
        b: T::Vector<S>,
    ) -> Updated<T::Vector<S>> {
        let mut g = if X { T::vneg(simd, grad) } else { grad };
        if W {
            g = T::vfma(simd, p, self.wd, g);
        }
        let v = T::vfma(
            simd,
            T::vmul(simd, self.c, g),
            g,
            T::vmul(simd, self.alpha, v),
        );
        let (den, ga) = if C {
            let d = T::vsub(simd, g, ga);
            let ga = if self.lerp_from_end {
                T::vfma(simd, self.c_minus_one, d, g)
            } else {
                T::vfma(simd, self.c, d, ga)
            };
            (T::vsqrt(simd, T::vfma(simd, T::vneg(simd, ga), ga, v)), ga)
        } else {
            (T::vsqrt(simd, v), ga)
        };
        let den = T::vadd(simd, den, self.eps);
        if M {
            let b = T::vadd(simd, T::vmul(simd, self.m, b), T::vdiv(simd, g, den));
            (T::vfma(simd, b, self.neg_lr, p), v, ga, b)
        } else {
            let p = T::vadd(simd, p, T::vdiv(simd, T::vmul(simd, self.neg_lr, g), den));
            (p, v, ga, b)
        }
    }
}

// Inlined into the pass in optimised builds; in unoptimised ones each variant keeps its own frame
// (inlined, a pass holding every variant needs a frame the size of all of them: megabytes).
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
fn run_pytorch<
    S: Simd,
    T: Element,
    B: Drive<T>,
    const C: bool,
    const M: bool,
    const W: bool,
    const X: bool,
>(
    simd: S,
    k: &Coefficients<T>,
    bufs: B,
) {
    let splat = |x: T| T::splat(simd, x);
    let rule = PyTorch::<T::Vector<S>, C, M, W, X> {
        alpha: splat(k.alpha),
        c: splat(k.one_minus_alpha),
        c_minus_one: splat(k.one_minus_alpha_minus_one),
        eps: splat(k.eps),
        wd: splat(k.weight_decay),
        m: splat(k.momentum),
        neg_lr: splat(k.neg_lr),
        lerp_from_end: k.lerp_from_end(),
    };
    bufs.drive(simd, &rule);
}

/// optax's step (see [`crate::reference`]), lane by lane.
struct Optax<V, const C: bool, const M: bool, const N: bool, const E: bool, const BC: bool> {
    d: V,
    c: V,
    eps: V,
    m: V,
    neg_lr: V,
    bc: V,
    one: V,
}

impl<
        S: Simd,
        T: Element,
        const C: bool,
        const M: bool,
        const N: bool,
        const E: bool,
        const BC: bool,
    > VectorRule<S, T> for Optax<T::Vector<S>, C, M, N, E, BC>
{
    const GA: bool = C;
    const B: bool = M;

    #[inline(always)]
    fn step(
        &self,
        simd: S,
        p: T::Vector<S>,
        g: T::Vector<S>,
        v: T::Vector<S>,
        ga: T::Vector<S>,
        b: T::Vector<S>,
    ) -> Updated<T::Vector<S>> {
        let v = T::vadd(
            simd,
            T::vmul(simd, self.c, T::vmul(simd, g, g)),
            T::vmul(simd, self.d, v),
        );
        let ga = if C {
            T::vadd(simd, T::vmul(simd, self.c, g), T::vmul(simd, self.d, ga))
        } else {
            ga
        };
        let (vh, gh) = if BC {
            let gh = if C { T::vdiv(simd, ga, self.bc) } else { ga };
            (T::vdiv(simd, v, self.bc), gh)
        } else {
            (v, ga)
        };
        let den = if C {
            T::vsub(simd, vh, T::vmul(simd, gh, gh))
        } else {
            vh
        };
        let s = if E {
            T::vdiv(simd, self.one, T::vsqrt(simd, T::vadd(simd, den, self.eps)))
        } else {
            T::vdiv(simd, self.one, T::vadd(simd, T::vsqrt(simd, den), self.eps))
        };
        let mut u = T::vmul(simd, T::vmul(simd, s, g), self.neg_lr);
        let mut b = b;
        if M {
            b = T::vadd(simd, u, T::vmul(simd, self.m, b));
            u = if N {
                T::vadd(simd, u, T::vmul(simd, self.m, b))
            } else {
                b
            };
        }
        (T::vadd(simd, p, u), v, ga, b)
    }
}

// Inlined into the pass in optimised builds; in unoptimised ones each variant keeps its own frame
// (inlined, a pass holding every variant needs a frame the size of all of them: megabytes).
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
fn run_optax<
    S: Simd,
    T: Element,
    B: Drive<T>,
    const C: bool,
    const M: bool,
    const N: bool,
    const E: bool,
    const BC: bool,
>(
    simd: S,
    k: &Coefficients<T>,
    bufs: B,
) {
    let splat = |x: T| T::splat(simd, x);
    let rule = Optax::<T::Vector<S>, C, M, N, E, BC> {
        d: splat(k.alpha),
        c: splat(k.one_minus_alpha),
        eps: splat(k.eps),
        m: splat(k.momentum),
        neg_lr: splat(k.neg_lr),
        bc: splat(k.bias_correction),
        one: splat(T::one()),
    };
    bufs.drive(simd, &rule);
}

/// Keras 3's step (see [`crate::reference`]), lane by lane.
struct Keras<V, const C: bool, const M: bool, const W: bool> {
    r: V,
    c: V,
    eps: V,
    m: V,
    lr: V,
    wd: V,
}

impl<S: Simd, T: Element, const C: bool, const M: bool, const W: bool> VectorRule<S, T>
    for Keras<T::Vector<S>, C, M, W>
{
    const GA: bool = C;
    const B: bool = M;

    #[inline(always)]
    fn step(
        &self,
        simd: S,
        p: T::Vector<S>,
        g: T::Vector<S>,
        v: T::Vector<S>,
        ga: T::Vector<S>,
        b: T::Vector<S>,
    ) -> Updated<T::Vector<S>> {
        let p = if W {
            T::vsub(simd, p, T::vmul(simd, T::vmul(simd, p, self.wd), self.lr))
        } else {
            p
        };
        let v = T::vadd(
            simd,
            T::vmul(simd, self.r, v),
            T::vmul(simd, self.c, T::vmul(simd, g, g)),
        );
        let (den, ga) = if C {
            let ga = T::vadd(simd, T::vmul(simd, self.r, ga), T::vmul(simd, self.c, g));
            (
                T::vadd(simd, T::vsub(simd, v, T::vmul(simd, ga, ga)), self.eps),
                ga,
            )
        } else {
            (T::vadd(simd, v, self.eps), ga)
        };
        let inc = T::vdiv(simd, T::vmul(simd, self.lr, g), T::vsqrt(simd, den));
        if M {
            let b = T::vadd(simd, T::vmul(simd, self.m, b), inc);
            (T::vsub(simd, p, b), v, ga, b)
        } else {
            (T::vsub(simd, p, inc), v, ga, b)
        }
    }
}

// Inlined into the pass in optimised builds; in unoptimised ones each variant keeps its own frame
// (inlined, a pass holding every variant needs a frame the size of all of them: megabytes).
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
fn run_keras<S: Simd, T: Element, B: Drive<T>, const C: bool, const M: bool, const W: bool>(
    simd: S,
    k: &Coefficients<T>,
    bufs: B,
) {
    let splat = |x: T| T::splat(simd, x);
    let rule = Keras::<T::Vector<S>, C, M, W> {
        r: splat(k.alpha),
        c: splat(k.one_minus_alpha),
        eps: splat(k.eps),
        m: splat(k.momentum),
        lr: splat(k.lr),
        wd: splat(k.weight_decay),
    };
    bufs.drive(simd, &rule);
}
