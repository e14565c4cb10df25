//! Hyperparameters (PyTorch's names and defaults), their validation, and the per-type coefficients.

use crate::{Element, Error};

/// The hyperparameters of `torch.optim.RMSprop`, with its defaults.
///
/// Plain data: change any field between steps (a learning-rate schedule writes `lr` before each
/// step). Every step validates them first.
///
/// | field | default | valid |
/// |---|---|---|
/// | `lr` | 1e-2 | finite, >= 0 |
/// | `alpha` | 0.99 | finite, >= 0 (PyTorch allows > 1, so does this crate) |
/// | `eps` | 1e-8 | finite, >= 0 |
/// | `weight_decay` | 0 | finite, >= 0 |
/// | `momentum` | 0 | finite, >= 0 |
///
/// The `>= 0` checks are PyTorch's; the finiteness checks (NaN, ±Inf, and values that overflow
/// once rounded to the element type, e.g. `lr = 1e300` for `f32`) are this crate's.
///
/// ```
/// use rmsprop_simd::Hyperparameters;
///
/// let hp = Hyperparameters { lr: 1e-3, momentum: 0.9, centered: true, ..Default::default() };
/// assert_eq!(hp.alpha, 0.99);
/// assert!(hp.validate().is_ok());
/// assert!(Hyperparameters { eps: f64::NAN, ..hp }.validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyperparameters {
    /// Learning rate.
    pub lr: f64,
    /// Smoothing constant of the square average: `v = alpha * v + (1 - alpha) * g * g`.
    pub alpha: f64,
    /// Added to the denominator after the square root.
    pub eps: f64,
    /// L2 penalty: `g = g + weight_decay * p` (applied when `weight_decay != 0`).
    pub weight_decay: f64,
    /// Momentum factor; the `momentum_buffer` state is used when `momentum > 0`.
    pub momentum: f64,
    /// Normalise by the variance estimate (`v - grad_avg^2`); uses the `grad_avg` state.
    pub centered: bool,
    /// Maximise the objective instead of minimising it.
    pub maximize: bool,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

impl Hyperparameters {
    /// Checks every value as a step would (for `f64` elements, the widest type).
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] naming the first bad value.
    pub fn validate(&self) -> Result<(), Error> {
        Coefficients::<f64>::new(self).map(|_| ())
    }

    /// Which state buffers these hyperparameters use: `(grad_avg, momentum_buffer)`.
    /// `square_avg` is always used.
    ///
    /// ```
    /// use rmsprop_simd::Hyperparameters;
    /// let hp = Hyperparameters { momentum: 0.9, ..Default::default() };
    /// assert_eq!(hp.uses_state(), (false, true));
    /// ```
    pub fn uses_state(&self) -> (bool, bool) {
        (self.centered, self.momentum > 0.0)
    }
}

/// The constants of one step, computed in `f64` from [`Hyperparameters`] and rounded once to the
/// element type `T`, exactly as PyTorch's CPU kernel does. The reference ([`crate::reference`])
/// and every SIMD backend use these same values.
///
/// ```
/// use rmsprop_simd::{Coefficients, Hyperparameters};
/// let k = Coefficients::<f32>::new(&Hyperparameters::default()).unwrap();
/// assert_eq!(k.one_minus_alpha, (1.0f64 - 0.99) as f32); // not 1.0f32 - 0.99f32
/// assert_eq!(k.neg_lr, -0.01f32);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefficients<T> {
    /// `T(alpha)`.
    pub alpha: T,
    /// `T(1 - alpha)`, the subtraction done in `f64`.
    pub one_minus_alpha: T,
    /// `one_minus_alpha - 1`, in `T` (the weight of PyTorch's `lerp` when `one_minus_alpha >= 0.5`).
    pub one_minus_alpha_minus_one: T,
    /// `T(eps)`.
    pub eps: T,
    /// `T(weight_decay)`.
    pub weight_decay: T,
    /// `T(momentum)`.
    pub momentum: T,
    /// `T(-lr)`.
    pub neg_lr: T,
    /// `weight_decay != 0` (decided on the `f64` value, as PyTorch does).
    pub use_weight_decay: bool,
    /// `momentum > 0` (decided on the `f64` value).
    pub use_momentum: bool,
    /// `centered`.
    pub centered: bool,
    /// `maximize`.
    pub maximize: bool,
}

impl<T: Element> Coefficients<T> {
    /// Validates `hp` and rounds its values to `T`.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] if a value is NaN, infinite, negative, or not finite once
    /// rounded to `T`.
    pub fn new(hp: &Hyperparameters) -> Result<Self, Error> {
        checked::<T>("lr", hp.lr)?;
        let alpha = checked::<T>("alpha", hp.alpha)?;
        let eps = checked::<T>("eps", hp.eps)?;
        let weight_decay = checked::<T>("weight_decay", hp.weight_decay)?;
        let momentum = checked::<T>("momentum", hp.momentum)?;
        let one_minus_alpha = T::from_f64(1.0 - hp.alpha);
        if !one_minus_alpha.is_finite() {
            return Err(Error::InvalidHyperparameter {
                name: "alpha",
                value: hp.alpha,
                reason: "1 - alpha overflows the element type",
            });
        }
        Ok(Coefficients {
            alpha,
            one_minus_alpha,
            one_minus_alpha_minus_one: one_minus_alpha - T::one(),
            eps,
            weight_decay,
            momentum,
            neg_lr: T::from_f64(-hp.lr),
            use_weight_decay: hp.weight_decay != 0.0,
            use_momentum: hp.momentum > 0.0,
            centered: hp.centered,
            maximize: hp.maximize,
        })
    }

    /// `true` when ATen's `lerp` (which updates `grad_avg` with weight `one_minus_alpha`) takes
    /// its second form, `end - (end - self) * (1 - weight)`: when `!(|weight| < 0.5)`. For the usual
    /// `alpha` in `[0, 1]` that is `one_minus_alpha >= 0.5`; the absolute value only matters for
    /// `alpha > 1.5`, which PyTorch accepts.
    #[inline(always)]
    pub fn lerp_from_end(&self) -> bool {
        // `one_minus_alpha` is finite (validated), so `!(|w| < 0.5)` is `|w| >= 0.5`.
        self.one_minus_alpha.to_f64().abs() >= 0.5
    }
}

fn checked<T: Element>(name: &'static str, value: f64) -> Result<T, Error> {
    let reason = if value.is_nan() {
        "must not be NaN"
    } else if value.is_infinite() {
        "must be finite"
    } else if value < 0.0 {
        "must be >= 0"
    } else if !T::from_f64(value).is_finite() {
        "overflows the element type"
    } else {
        return Ok(T::from_f64(value));
    };
    Err(Error::InvalidHyperparameter {
        name,
        value,
        reason,
    })
}
