//! The scalar reference: the arithmetic specification every backend must equal bit for bit.
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
//! The SIMD kernel ([`crate::Kernel`]) performs the same operations in the same order, lane by
//! lane; the tests compare it with this module over every backend with `to_bits`.

use crate::{validate, Coefficients, Element, Error, Hyperparameters, State};

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
