//! The scalar reference: the arithmetic specification every backend must equal bit for bit.
//!
//! Three semantics ([`crate::Semantics`]), each in its library's operation order; plain `+ - * /`
//! are single IEEE operations in the element type `T`, `fma` is fused (one rounding), `sqrt` is
//! correctly rounded, and every coefficient is computed in `f64` and rounded once to `T`.
//!
//! # PyTorch (`torch.optim.RMSprop`, the default)
//!
//! One element at a time, in PyTorch 2.15's CPU operation order (single-tensor `RMSprop`), with
//! the constants of [`Coefficients`] (computed in `f64`, rounded once to `T`) and correctly rounded
//! IEEE operations; `fma` is a fused multiply-add (one rounding). For each element:
//!
//! 1. `g = grad`; `g = -g` if `maximize`; if `weight_decay != 0`: `g = fma(p, weight_decay, g)`
//! 2. `v = fma(one_minus_alpha * g, g, alpha * v)` (`(c*g)*g`, not `c*(g*g)`: they differ near
//!    overflow)
//! 3. centered: `d = g - ga`; `ga = fma(one_minus_alpha, d, ga)` if `|one_minus_alpha| < 0.5`,
//!    else `ga = fma(one_minus_alpha - 1, d, g)` (ATen's `lerp`, whose test is on the absolute
//!    value: it differs from `one_minus_alpha < 0.5` only for `alpha > 1.5`);
//!    `den = sqrt(fma(-ga, ga, v))` (NaN when negative: PyTorch does not clamp).
//!    Not centered: `den = sqrt(v)`
//! 4. `den = den + eps`
//! 5. `momentum > 0`: `b = momentum * b + g / den`; `p = fma(b, -lr, p)`.
//!    Otherwise: `p = p + (-lr * g) / den`
//!
//! # optax (`optax.rmsprop`, 0.2.8)
//!
//! With `c = T(1 - decay)`, `d = T(decay)`, `bc = T(1 - decay^step)` (the power in `f64`),
//! `L = T(-lr)`, `m = T(momentum)`, no fma:
//!
//! 1. `v = c * (g * g) + d * v`; centered: `ga = c * g + d * ga`
//! 2. bias_correction: `vh = v / bc`, `gh = ga / bc`; else `vh = v`, `gh = ga`
//! 3. `den = vh - gh * gh` if centered, else `vh`;
//!    `s = 1 / sqrt(den + eps)` if `eps_in_sqrt`, else `s = 1 / (sqrt(den) + eps)`
//! 4. `u = (s * g) * L`
//! 5. momentum > 0: `b = u + m * b`; `u = u + m * b` if nesterov, else `u = b`
//! 6. `p = p + u`
//!
//! # Keras 3 (`keras.optimizers.RMSprop`)
//!
//! With `lr = T(f32(lr))` ([`crate::KerasOptions::lr_through_f32`], else `T(lr)`),
//! `r = T(rho)`, `c = T(1 - rho)`, no fma:
//!
//! 1. weight_decay (decoupled, before the update): `p = p - (p * T(wd)) * lr`
//! 2. `v = r * v + c * (g * g)`; centered: `ga = r * ga + c * g`, `den = (v - ga * ga) + eps`;
//!    else `den = v + eps`
//! 3. `inc = (lr * g) / sqrt(den)`
//! 4. momentum > 0: `b = m * b + inc`; `p = p - b`; else `p = p - inc`
//!
//! The SIMD kernel ([`crate::Kernel`]) performs the same operations in the same order, lane by
//! lane; the tests compare it with this module over every backend with `to_bits`.

use crate::{validate, Coefficients, Element, Error, Hyperparameters, Rule, State};

/// One element of one step: updates `param` and its state in place.
///
/// `grad_avg` must be `Some` exactly when `k.centered`, `momentum_buffer` exactly when
/// `k.use_momentum` (a `None` where it is needed is treated as a zero that is not stored).
///
/// ```
/// use rmsprop_simd::{reference, Coefficients, Hyperparameters};
///
/// let k = Coefficients::<f64>::new(&Hyperparameters::default()).unwrap();
/// let (mut p, mut v) = (1.0, 0.0);
/// reference::step_element(&k, &mut p, 0.5, &mut v, None, None);
/// assert_eq!(v, (1.0 - 0.99) * 0.5 * 0.5); // the coefficient is `1 - alpha` rounded once
/// assert!(p < 1.0);
/// ```
#[inline]
pub fn step_element<T: Element>(
    k: &Coefficients<T>,
    param: &mut T,
    grad: T,
    square_avg: &mut T,
    grad_avg: Option<&mut T>,
    momentum_buffer: Option<&mut T>,
) {
    match k.rule {
        Rule::PyTorch => pytorch(k, param, grad, square_avg, grad_avg, momentum_buffer),
        Rule::Optax { .. } => optax(k, param, grad, square_avg, grad_avg, momentum_buffer),
        Rule::Keras => keras(k, param, grad, square_avg, grad_avg, momentum_buffer),
    }
}

#[inline]
fn pytorch<T: Element>(
    k: &Coefficients<T>,
    param: &mut T,
    grad: T,
    square_avg: &mut T,
    grad_avg: Option<&mut T>,
    momentum_buffer: Option<&mut T>,
) {
    let p = *param;
    // 1. gradient: sign, then weight decay
    let mut g = if k.maximize { -grad } else { grad };
    if k.use_weight_decay {
        g = T::fma(p, k.weight_decay, g);
    }
    // 2. square average
    let v = T::fma(k.one_minus_alpha * g, g, k.alpha * *square_avg);
    *square_avg = v;
    // 3. denominator, centered or not
    let den = if k.centered {
        let mut zero = T::zero();
        let ga_ref = grad_avg.unwrap_or(&mut zero);
        let d = g - *ga_ref;
        let ga = if k.lerp_from_end() {
            T::fma(k.one_minus_alpha_minus_one, d, g)
        } else {
            T::fma(k.one_minus_alpha, d, *ga_ref)
        };
        *ga_ref = ga;
        T::sqrt(T::fma(-ga, ga, v))
    } else {
        T::sqrt(v)
    };
    // 4. eps after the square root
    let den = den + k.eps;
    // 5. update
    *param = if k.use_momentum {
        let mut zero = T::zero();
        let b_ref = momentum_buffer.unwrap_or(&mut zero);
        let b = k.momentum * *b_ref + g / den;
        *b_ref = b;
        T::fma(b, k.neg_lr, p)
    } else {
        p + (k.neg_lr * g) / den
    };
}

#[inline]
fn optax<T: Element>(
    k: &Coefficients<T>,
    param: &mut T,
    g: T,
    square_avg: &mut T,
    grad_avg: Option<&mut T>,
    momentum_buffer: Option<&mut T>,
) {
    let Rule::Optax {
        eps_in_sqrt,
        nesterov,
        bias_correction,
    } = k.rule
    else {
        unreachable!("optax's rule")
    };
    let c = k.one_minus_alpha;
    // 1. the averages
    let v = c * (g * g) + k.alpha * *square_avg;
    *square_avg = v;
    let mut zero = T::zero();
    let ga_ref = grad_avg.unwrap_or(&mut zero);
    let ga = if k.centered {
        let ga = c * g + k.alpha * *ga_ref;
        *ga_ref = ga;
        ga
    } else {
        T::zero()
    };
    // 2. bias correction
    let (vh, gh) = if bias_correction {
        (v / k.bias_correction, ga / k.bias_correction)
    } else {
        (v, ga)
    };
    // 3. the scale
    let den = if k.centered { vh - gh * gh } else { vh };
    let s = if eps_in_sqrt {
        T::one() / T::sqrt(den + k.eps)
    } else {
        T::one() / (T::sqrt(den) + k.eps)
    };
    // 4. the learning rate
    let mut u = (s * g) * k.neg_lr;
    // 5. momentum (optax.trace)
    if k.use_momentum {
        let mut zero = T::zero();
        let b_ref = momentum_buffer.unwrap_or(&mut zero);
        let b = u + k.momentum * *b_ref;
        *b_ref = b;
        u = if nesterov { u + k.momentum * b } else { b };
    }
    // 6. apply
    *param = *param + u;
}

#[inline]
fn keras<T: Element>(
    k: &Coefficients<T>,
    param: &mut T,
    g: T,
    square_avg: &mut T,
    grad_avg: Option<&mut T>,
    momentum_buffer: Option<&mut T>,
) {
    let mut p = *param;
    // 1. decoupled weight decay, before the update
    if k.use_weight_decay {
        p = p - (p * k.weight_decay) * k.lr;
    }
    // 2. averages and denominator
    let v = k.alpha * *square_avg + k.one_minus_alpha * (g * g);
    *square_avg = v;
    let den = if k.centered {
        let mut zero = T::zero();
        let ga_ref = grad_avg.unwrap_or(&mut zero);
        let ga = k.alpha * *ga_ref + k.one_minus_alpha * g;
        *ga_ref = ga;
        (v - ga * ga) + k.eps
    } else {
        v + k.eps
    };
    // 3. the increment
    let inc = (k.lr * g) / T::sqrt(den);
    // 4. momentum
    *param = if k.use_momentum {
        let mut zero = T::zero();
        let b_ref = momentum_buffer.unwrap_or(&mut zero);
        let b = k.momentum * *b_ref + inc;
        *b_ref = b;
        p - b
    } else {
        p - inc
    };
}

/// One step over whole buffers with the reference arithmetic, one element at a time on the
/// calling thread. Same contract as [`crate::step`]: validated first, nothing written on error.
///
/// # Errors
/// As [`crate::step`].
///
/// ```
/// use rmsprop_simd::{reference, Hyperparameters, State};
///
/// let hp = Hyperparameters::default();
/// let (mut p, g, mut v) = (vec![1.0f32; 5], vec![0.5f32; 5], vec![0.0f32; 5]);
/// reference::step(&hp, &mut p, &g, State::new(&mut v)).unwrap();
/// assert!(p.iter().all(|&x| x < 1.0));
/// ```
pub fn step<T: Element>(
    hp: &Hyperparameters,
    params: &mut [T],
    grads: &[T],
    state: State<'_, T>,
) -> Result<(), Error> {
    let k = validate(hp, params, grads, &state)?;
    let State {
        square_avg,
        mut grad_avg,
        mut momentum_buffer,
    } = state;
    for i in 0..params.len() {
        step_element(
            &k,
            &mut params[i],
            grads[i],
            &mut square_avg[i],
            grad_avg.as_deref_mut().map(|s| &mut s[i]),
            momentum_buffer.as_deref_mut().map(|s| &mut s[i]),
        );
    }
    Ok(())
}
