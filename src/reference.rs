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

use crate::storage::{round_to, Buffer16};
use crate::{
    validate, validate_with, Coefficients, Element, Error, Hyperparameters, ParamsCopy, Rule,
    State, StepOptions, Storage,
};

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
    let k = validate::<T, T, T, T>(hp, params, grads, &state)?;
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

/// The specification of [`crate::Kernel::step_with`]: for each element `i`, every stored value is
/// widened exactly to the compute type; the gradient is pre-processed (divided by `grad_scale`,
/// clamped to `±clip_value`, multiplied by `grad_multiplier`, see [`StepOptions`]);
/// [`step_element`] runs; each result is rounded to its buffer's storage ([`Storage::round`]
/// to nearest-even, or [`crate::storage::bf16_stochastic`] / [`crate::storage::f16_stochastic`]
/// with [`crate::storage::random_bits`]`(seed, step, buffer, i)` under stochastic rounding), and
/// the parameter copy gets the new parameter rounded to nearest-even.
///
/// ```
/// use rmsprop_simd::{bf16, reference, Hyperparameters, State, StepOptions};
///
/// let mut p = vec![bf16::ONE; 4];
/// let g = vec![bf16::from_f32(0.5); 4];
/// let mut v = vec![bf16::ZERO; 4];
/// reference::step_with(&Hyperparameters::default(), &StepOptions::default(), &mut p, &g,
///     State::new(&mut v), None)?;
/// assert!(p[0] < bf16::ONE);
/// # Ok::<(), rmsprop_simd::Error>(())
/// ```
///
/// # Errors
/// As [`crate::Kernel::step_with`]; nothing is written on error.
pub fn step_with<P, G, S>(
    hp: &Hyperparameters,
    options: &StepOptions,
    params: &mut [P],
    grads: &[G],
    state: State<'_, S>,
    params_copy: Option<ParamsCopy<'_>>,
) -> Result<(), Error>
where
    P: Storage,
    G: Storage<Compute = P::Compute>,
    S: Storage<Compute = P::Compute>,
{
    let (k, prep) = validate_with::<P::Compute, P, G, S>(
        hp,
        options,
        params,
        grads,
        &state,
        params_copy.as_ref(),
    )?;
    let State {
        square_avg,
        mut grad_avg,
        mut momentum_buffer,
    } = state;
    let mut params_copy = params_copy;
    let rounding = options.rounding;
    for i in 0..params.len() {
        let mut p = params[i].widen();
        let g = prep.apply(grads[i].widen());
        let mut v = square_avg[i].widen();
        let mut ga = grad_avg.as_deref().map(|s| s[i].widen());
        let mut b = momentum_buffer.as_deref().map(|s| s[i].widen());
        step_element(&k, &mut p, g, &mut v, ga.as_mut(), b.as_mut());
        let index = i as u64;
        params[i] = round_to::<P>(p, rounding, Buffer16::Params, index);
        square_avg[i] = round_to::<S>(v, rounding, Buffer16::SquareAvg, index);
        if let (Some(s), Some(x)) = (grad_avg.as_deref_mut(), ga) {
            s[i] = round_to::<S>(x, rounding, Buffer16::GradAvg, index);
        }
        if let (Some(s), Some(x)) = (momentum_buffer.as_deref_mut(), b) {
            s[i] = round_to::<S>(x, rounding, Buffer16::MomentumBuffer, index);
        }
        // The compute type of a parameter copy is f32 (checked above): the cast is exact.
        match params_copy.as_mut() {
            Some(ParamsCopy::Bf16(c)) => c[i] = crate::bf16::from_f32(p.to_f64() as f32),
            Some(ParamsCopy::F16(c)) => c[i] = crate::f16::from_f32(p.to_f64() as f32),
            None => {}
        }
    }
    Ok(())
}
