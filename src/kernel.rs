//! The fused SIMD kernel, written once over pulp's `Simd` and the element type.

use crate::{Coefficients, Element};
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

impl<'a, T> Buffers<'a, T> {
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Splits every buffer at `mid` (absent, empty state buffers stay empty on both sides).
    #[cfg_attr(not(feature = "rayon"), allow(dead_code))]
    pub fn split_at(self, mid: usize) -> (Buffers<'a, T>, Buffers<'a, T>) {
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

/// One serial pass over `bufs` with coefficients `k`, as a pulp operation.
pub(crate) struct Pass<'a, T> {
    pub k: Coefficients<T>,
    pub bufs: Buffers<'a, T>,
}

impl<T: Element> WithSimd for Pass<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Pass { k, bufs } = self;
        // The four switches become compile-time constants, so the loop body has no branches.
        macro_rules! variants {
            ($(($c:literal, $m:literal, $w:literal, $x:literal)),*) => {
                match (k.centered, k.use_momentum, k.use_weight_decay, k.maximize) {
                    $(($c, $m, $w, $x) => run::<S, T, $c, $m, $w, $x>(simd, &k, bufs),)*
                }
            };
        }
        variants!(
            (false, false, false, false),
            (false, false, false, true),
            (false, false, true, false),
            (false, false, true, true),
            (false, true, false, false),
            (false, true, false, true),
            (false, true, true, false),
            (false, true, true, true),
            (true, false, false, false),
            (true, false, false, true),
            (true, false, true, false),
            (true, false, true, true),
            (true, true, false, false),
            (true, true, false, true),
            (true, true, true, false),
            (true, true, true, true)
        )
    }
}

/// `(param, square_avg, grad_avg, momentum_buffer)` after one vector step.
type Updated<V> = (V, V, V, V);

/// The coefficients splatted into vectors once per pass.
struct Splat<V> {
    alpha: V,
    one_minus_alpha: V,
    one_minus_alpha_minus_one: V,
    eps: V,
    weight_decay: V,
    momentum: V,
    neg_lr: V,
    zero: V,
}

/// One vector of one step: the lane-wise image of [`crate::reference::step_element`], same
/// operations in the same order. Returns the new `(param, square_avg, grad_avg, momentum_buffer)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step_vector<
    S: Simd,
    T: Element,
    const CENTERED: bool,
    const MOMENTUM: bool,
    const WEIGHT_DECAY: bool,
    const MAXIMIZE: bool,
>(
    simd: S,
    c: &Splat<T::Vector<S>>,
    lerp_from_end: bool,
    p: T::Vector<S>,
    grad: T::Vector<S>,
    v: T::Vector<S>,
    ga: T::Vector<S>,
    b: T::Vector<S>,
) -> Updated<T::Vector<S>> {
    let mut g = if MAXIMIZE { T::vneg(simd, grad) } else { grad };
    if WEIGHT_DECAY {
        g = T::vfma(simd, p, c.weight_decay, g);
    }
    let v = T::vfma(
        simd,
        T::vmul(simd, c.one_minus_alpha, g),
        g,
        T::vmul(simd, c.alpha, v),
    );
    let (den, ga) = if CENTERED {
        let d = T::vsub(simd, g, ga);
        let ga = if lerp_from_end {
            T::vfma(simd, c.one_minus_alpha_minus_one, d, g)
        } else {
            T::vfma(simd, c.one_minus_alpha, d, ga)
        };
        (T::vsqrt(simd, T::vfma(simd, T::vneg(simd, ga), ga, v)), ga)
    } else {
        (T::vsqrt(simd, v), ga)
    };
    let den = T::vadd(simd, den, c.eps);
    if MOMENTUM {
        let b = T::vadd(simd, T::vmul(simd, c.momentum, b), T::vdiv(simd, g, den));
        (T::vfma(simd, b, c.neg_lr, p), v, ga, b)
    } else {
        let p = T::vadd(simd, p, T::vdiv(simd, T::vmul(simd, c.neg_lr, g), den));
        (p, v, ga, b)
    }
}

#[inline(always)]
fn run<
    S: Simd,
    T: Element,
    const CENTERED: bool,
    const MOMENTUM: bool,
    const WEIGHT_DECAY: bool,
    const MAXIMIZE: bool,
>(
    simd: S,
    k: &Coefficients<T>,
    bufs: Buffers<'_, T>,
) {
    let splat = |x: T| T::splat(simd, x);
    let c = Splat {
        alpha: splat(k.alpha),
        one_minus_alpha: splat(k.one_minus_alpha),
        one_minus_alpha_minus_one: splat(k.one_minus_alpha_minus_one),
        eps: splat(k.eps),
        weight_decay: splat(k.weight_decay),
        momentum: splat(k.momentum),
        neg_lr: splat(k.neg_lr),
        zero: splat(T::zero()),
    };
    let lerp_from_end = k.lerp_from_end();
    let step = |p, g, v, ga, b| {
        step_vector::<S, T, CENTERED, MOMENTUM, WEIGHT_DECAY, MAXIMIZE>(
            simd,
            &c,
            lerp_from_end,
            p,
            g,
            v,
            ga,
            b,
        )
    };

    let (p_head, p_tail) = T::as_mut_simd::<S>(bufs.params);
    let (g_head, g_tail) = T::as_simd::<S>(bufs.grads);
    let (v_head, v_tail) = T::as_mut_simd::<S>(bufs.square_avg);
    let (ga_head, ga_tail) = T::as_mut_simd::<S>(bufs.grad_avg);
    let (b_head, b_tail) = T::as_mut_simd::<S>(bufs.momentum_buffer);

    // Re-slicing to the common length lets the compiler drop the bounds checks in the loop.
    let n = p_head.len();
    let g_head = &g_head[..n];
    let v_head = &mut v_head[..n];
    let ga_head = if CENTERED { &mut ga_head[..n] } else { ga_head };
    let b_head = if MOMENTUM { &mut b_head[..n] } else { b_head };

    for i in 0..n {
        let ga = if CENTERED { ga_head[i] } else { c.zero };
        let b = if MOMENTUM { b_head[i] } else { c.zero };
        let (p, v, ga, b) = step(p_head[i], g_head[i], v_head[i], ga, b);
        p_head[i] = p;
        v_head[i] = v;
        if CENTERED {
            ga_head[i] = ga;
        }
        if MOMENTUM {
            b_head[i] = b;
        }
    }

    // The tail (shorter than one vector) goes through the same per-vector step.
    if !p_tail.is_empty() {
        let ga = if CENTERED {
            T::partial_load(simd, ga_tail)
        } else {
            c.zero
        };
        let b = if MOMENTUM {
            T::partial_load(simd, b_tail)
        } else {
            c.zero
        };
        let (p, v, ga, b) = step(
            T::partial_load(simd, p_tail),
            T::partial_load(simd, g_tail),
            T::partial_load(simd, v_tail),
            ga,
            b,
        );
        T::partial_store(simd, p_tail, p);
        T::partial_store(simd, v_tail, v);
        if CENTERED {
            T::partial_store(simd, ga_tail, ga);
        }
        if MOMENTUM {
            T::partial_store(simd, b_tail, b);
        }
    }
}
