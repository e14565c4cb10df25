//! The fused SIMD kernel, written once over pulp's `Simd` and the element type.
//!
//! One loop ([`drive`]) walks the buffers; each semantics is a rule ([`pytorch`], [`optax`],
//! [`keras`]): a per-vector update whose switches are const generics, so every combination is
//! its own branch-free loop. The runtime switches become const generics through
//! [`with_consts!`], which generates the `2^n` instantiations: no case list is written by hand.
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

impl<T: Element> WithSimd for Pass<'_, T> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Pass { k, bufs } = self;
        match k.rule {
            Rule::PyTorch => with_consts!(
                [] [k.centered, k.use_momentum, k.use_weight_decay, k.maximize]
                pytorch::<S, T>(simd, &k, bufs)
            ),
            Rule::Optax {
                eps_in_sqrt,
                nesterov,
                bias_correction,
            } => with_consts!(
                [] [k.centered, k.use_momentum, nesterov, eps_in_sqrt, bias_correction]
                optax::<S, T>(simd, &k, bufs)
            ),
            Rule::Keras => with_consts!(
                [] [k.centered, k.use_momentum, k.use_weight_decay]
                keras::<S, T>(simd, &k, bufs)
            ),
        }
    }
}

/// `(param, square_avg, grad_avg, momentum_buffer)` after one vector step.
type Updated<V> = (V, V, V, V);

/// The loop shared by every rule: `step(p, g, v, ga, b)` on each full vector, then once on the
/// tail through partial loads and stores. `grad_avg` is read and written only when `GA`,
/// `momentum_buffer` only when `B` (otherwise they are empty and `zero` stands in).
#[inline(always)]
fn drive<S: Simd, T: Element, const GA: bool, const B: bool>(
    simd: S,
    bufs: Buffers<'_, T>,
    zero: T::Vector<S>,
    step: impl Fn(
        T::Vector<S>,
        T::Vector<S>,
        T::Vector<S>,
        T::Vector<S>,
        T::Vector<S>,
    ) -> Updated<T::Vector<S>>,
) {
    let (p_head, p_tail) = T::as_mut_simd::<S>(bufs.params);
    let (g_head, g_tail) = T::as_simd::<S>(bufs.grads);
    let (v_head, v_tail) = T::as_mut_simd::<S>(bufs.square_avg);
    let (ga_head, ga_tail) = T::as_mut_simd::<S>(bufs.grad_avg);
    let (b_head, b_tail) = T::as_mut_simd::<S>(bufs.momentum_buffer);

    // Re-slicing to the common length lets the compiler drop the bounds checks in the loop.
    let n = p_head.len();
    let g_head = &g_head[..n];
    let v_head = &mut v_head[..n];
    let ga_head = if GA { &mut ga_head[..n] } else { ga_head };
    let b_head = if B { &mut b_head[..n] } else { b_head };

    for i in 0..n {
        let ga = if GA { ga_head[i] } else { zero };
        let b = if B { b_head[i] } else { zero };
        let (p, v, ga, b) = step(p_head[i], g_head[i], v_head[i], ga, b);
        p_head[i] = p;
        v_head[i] = v;
        if GA {
            ga_head[i] = ga;
        }
        if B {
            b_head[i] = b;
        }
    }

    // The tail (shorter than one vector) goes through the same per-vector step.
    if !p_tail.is_empty() {
        let ga = if GA {
            T::partial_load(simd, ga_tail)
        } else {
            zero
        };
        let b = if B {
            T::partial_load(simd, b_tail)
        } else {
            zero
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
        if GA {
            T::partial_store(simd, ga_tail, ga);
        }
        if B {
            T::partial_store(simd, b_tail, b);
        }
    }
}

/// PyTorch's step (see [`crate::reference`]), lane by lane.
#[inline(always)]
fn pytorch<
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
    let (alpha, c, c_minus_one) = (
        splat(k.alpha),
        splat(k.one_minus_alpha),
        splat(k.one_minus_alpha_minus_one),
    );
    let (eps, wd, m, neg_lr) = (
        splat(k.eps),
        splat(k.weight_decay),
        splat(k.momentum),
        splat(k.neg_lr),
    );
    let lerp_from_end = k.lerp_from_end();
    drive::<S, T, CENTERED, MOMENTUM>(simd, bufs, splat(T::zero()), |p, grad, v, ga, b| {
        let mut g = if MAXIMIZE { T::vneg(simd, grad) } else { grad };
        if WEIGHT_DECAY {
            g = T::vfma(simd, p, wd, g);
        }
        let v = T::vfma(simd, T::vmul(simd, c, g), g, T::vmul(simd, alpha, v));
        let (den, ga) = if CENTERED {
            let d = T::vsub(simd, g, ga);
            let ga = if lerp_from_end {
                T::vfma(simd, c_minus_one, d, g)
            } else {
                T::vfma(simd, c, d, ga)
            };
            (T::vsqrt(simd, T::vfma(simd, T::vneg(simd, ga), ga, v)), ga)
        } else {
            (T::vsqrt(simd, v), ga)
        };
        let den = T::vadd(simd, den, eps);
        if MOMENTUM {
            let b = T::vadd(simd, T::vmul(simd, m, b), T::vdiv(simd, g, den));
            (T::vfma(simd, b, neg_lr, p), v, ga, b)
        } else {
            let p = T::vadd(simd, p, T::vdiv(simd, T::vmul(simd, neg_lr, g), den));
            (p, v, ga, b)
        }
    })
}

/// optax's step (see [`crate::reference`]), lane by lane.
#[inline(always)]
fn optax<
    S: Simd,
    T: Element,
    const CENTERED: bool,
    const MOMENTUM: bool,
    const NESTEROV: bool,
    const EPS_IN_SQRT: bool,
    const BIAS_CORRECTION: bool,
>(
    simd: S,
    k: &Coefficients<T>,
    bufs: Buffers<'_, T>,
) {
    let splat = |x: T| T::splat(simd, x);
    let (d, c, eps, m) = (
        splat(k.alpha),
        splat(k.one_minus_alpha),
        splat(k.eps),
        splat(k.momentum),
    );
    let (neg_lr, bc, one) = (splat(k.neg_lr), splat(k.bias_correction), splat(T::one()));
    drive::<S, T, CENTERED, MOMENTUM>(simd, bufs, splat(T::zero()), |p, g, v, ga, b| {
        let v = T::vadd(
            simd,
            T::vmul(simd, c, T::vmul(simd, g, g)),
            T::vmul(simd, d, v),
        );
        let ga = if CENTERED {
            T::vadd(simd, T::vmul(simd, c, g), T::vmul(simd, d, ga))
        } else {
            ga
        };
        let (vh, gh) = if BIAS_CORRECTION {
            let gh = if CENTERED { T::vdiv(simd, ga, bc) } else { ga };
            (T::vdiv(simd, v, bc), gh)
        } else {
            (v, ga)
        };
        let den = if CENTERED {
            T::vsub(simd, vh, T::vmul(simd, gh, gh))
        } else {
            vh
        };
        let s = if EPS_IN_SQRT {
            T::vdiv(simd, one, T::vsqrt(simd, T::vadd(simd, den, eps)))
        } else {
            T::vdiv(simd, one, T::vadd(simd, T::vsqrt(simd, den), eps))
        };
        let mut u = T::vmul(simd, T::vmul(simd, s, g), neg_lr);
        let mut b = b;
        if MOMENTUM {
            b = T::vadd(simd, u, T::vmul(simd, m, b));
            u = if NESTEROV {
                T::vadd(simd, u, T::vmul(simd, m, b))
            } else {
                b
            };
        }
        (T::vadd(simd, p, u), v, ga, b)
    })
}

/// Keras 3's step (see [`crate::reference`]), lane by lane.
#[inline(always)]
fn keras<
    S: Simd,
    T: Element,
    const CENTERED: bool,
    const MOMENTUM: bool,
    const WEIGHT_DECAY: bool,
>(
    simd: S,
    k: &Coefficients<T>,
    bufs: Buffers<'_, T>,
) {
    let splat = |x: T| T::splat(simd, x);
    let (r, c, eps, m) = (
        splat(k.alpha),
        splat(k.one_minus_alpha),
        splat(k.eps),
        splat(k.momentum),
    );
    let (lr, wd) = (splat(k.lr), splat(k.weight_decay));
    drive::<S, T, CENTERED, MOMENTUM>(simd, bufs, splat(T::zero()), |p, g, v, ga, b| {
        let p = if WEIGHT_DECAY {
            T::vsub(simd, p, T::vmul(simd, T::vmul(simd, p, wd), lr))
        } else {
            p
        };
        let v = T::vadd(
            simd,
            T::vmul(simd, r, v),
            T::vmul(simd, c, T::vmul(simd, g, g)),
        );
        let (den, ga) = if CENTERED {
            let ga = T::vadd(simd, T::vmul(simd, r, ga), T::vmul(simd, c, g));
            (
                T::vadd(simd, T::vsub(simd, v, T::vmul(simd, ga, ga)), eps),
                ga,
            )
        } else {
            (T::vadd(simd, v, eps), ga)
        };
        let inc = T::vdiv(simd, T::vmul(simd, lr, g), T::vsqrt(simd, den));
        if MOMENTUM {
            let b = T::vadd(simd, T::vmul(simd, m, b), inc);
            (T::vsub(simd, p, b), v, ga, b)
        } else {
            (T::vsub(simd, p, inc), v, ga, b)
        }
    })
}
