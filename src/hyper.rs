//! Hyperparameters (PyTorch's names and defaults), the semantics of other frameworks, their
//! validation, and the per-type coefficients.

use crate::{Element, Error};

/// Whose RMSprop arithmetic a step follows. PyTorch's is the default; optax's and Keras 3's
/// differ in where `eps` goes, where the learning rate enters the momentum buffer, the initial
/// square average, Nesterov momentum, bias correction and decoupled weight decay. Each is defined
/// element by element in [`crate::reference`], in the library's own operation order.
///
/// | optax `rmsprop(...)` | Keras `RMSprop(...)` | this crate |
/// |---|---|---|
/// | `learning_rate` | `learning_rate` (default 1e-3) | [`Hyperparameters::lr`] |
/// | `decay` (0.9) | `rho` (0.9) | [`Hyperparameters::alpha`] |
/// | `eps` (1e-8) | `epsilon` (1e-7) | [`Hyperparameters::eps`] |
/// | `initial_scale` (0) | - | [`OptaxOptions::initial_scale`] (the state's starting value) |
/// | `eps_in_sqrt` (true) | - | [`OptaxOptions::eps_in_sqrt`] |
/// | `centered` (false) | `centered` (false) | [`Hyperparameters::centered`] |
/// | `momentum` (None) | `momentum` (0) | [`Hyperparameters::momentum`] (None = 0) |
/// | `nesterov` (false) | - | [`OptaxOptions::nesterov`] |
/// | `bias_correction` (false) | - | [`OptaxOptions::bias_correction`], with [`Hyperparameters::step`] |
/// | - | `weight_decay` (None, decoupled) | [`Hyperparameters::weight_decay`] (None = 0) |
///
/// optax's `momentum=0.0` (a trace with decay 0) updates the parameters exactly as `None`; this
/// crate keeps no buffer for it. `maximize` is PyTorch's only; weight decay is not part of
/// optax's `rmsprop` (chain `optax.add_decayed_weights` yourself).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Semantics {
    /// `torch.optim.RMSprop` (the default).
    #[default]
    PyTorch,
    /// `optax.rmsprop`.
    Optax(OptaxOptions),
    /// `keras.optimizers.RMSprop` (Keras 3).
    Keras(KerasOptions),
}

/// The options of `optax.rmsprop` that PyTorch does not have, with optax's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptaxOptions {
    /// The starting value of `square_avg` (optax's `nu`): state you allocate starts there
    /// ([`crate::RmsProp`] does it for you). Default 0.
    pub initial_scale: f64,
    /// `1 / sqrt(v + eps)` (true, optax's default) instead of `1 / (sqrt(v) + eps)`.
    pub eps_in_sqrt: bool,
    /// Nesterov momentum (with `momentum > 0`). Default false.
    pub nesterov: bool,
    /// Divide the averages by `1 - decay^t`, `t` = [`Hyperparameters::step`]. Default false.
    pub bias_correction: bool,
}

impl Default for OptaxOptions {
    fn default() -> Self {
        OptaxOptions {
            initial_scale: 0.0,
            eps_in_sqrt: true,
            nesterov: false,
            bias_correction: false,
        }
    }
}

/// The options of Keras 3's RMSprop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KerasOptions {
    /// Round the learning rate through `f32` before using it (default true, as Keras does: it
    /// keeps the learning rate in a float32 variable, so `f64` parameters see `f64(f32(lr))`).
    /// False uses `lr` rounded once to the element type.
    pub lr_through_f32: bool,
}

impl Default for KerasOptions {
    fn default() -> Self {
        KerasOptions {
            lr_through_f32: true,
        }
    }
}

/// The hyperparameters of `torch.optim.RMSprop`, with its defaults (and, through
/// [`Hyperparameters::semantics`], those of optax and Keras: see [`Semantics`]).
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
    /// Maximise the objective instead of minimising it (PyTorch semantics only).
    pub maximize: bool,
    /// Whose arithmetic the step follows (default [`Semantics::PyTorch`]).
    pub semantics: Semantics,
    /// The number of this step, from 1 (optax's `count` after its increment). Only optax's
    /// bias correction reads it; [`crate::RmsProp`] sets it from each tensor's step count.
    pub step: u64,
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
            semantics: Semantics::PyTorch,
            step: 0,
        }
    }
}

impl Hyperparameters {
    /// `optax.rmsprop(learning_rate)` with optax's defaults: `decay` 0.9, `eps` 1e-8,
    /// `initial_scale` 0, `eps_in_sqrt` true, not centered, no momentum, no bias correction.
    ///
    /// ```
    /// use rmsprop_simd::{Hyperparameters, Semantics};
    /// let hp = Hyperparameters::optax(1e-3);
    /// assert_eq!((hp.alpha, hp.eps), (0.9, 1e-8));
    /// assert!(matches!(hp.semantics, Semantics::Optax(o) if o.eps_in_sqrt));
    /// ```
    pub fn optax(learning_rate: f64) -> Self {
        Hyperparameters {
            lr: learning_rate,
            alpha: 0.9,
            eps: 1e-8,
            semantics: Semantics::Optax(OptaxOptions::default()),
            ..Default::default()
        }
    }

    /// `keras.optimizers.RMSprop()` with Keras 3's defaults: `learning_rate` 1e-3, `rho` 0.9,
    /// `momentum` 0, `epsilon` 1e-7, not centered, no weight decay.
    ///
    /// ```
    /// use rmsprop_simd::Hyperparameters;
    /// let hp = Hyperparameters::keras();
    /// assert_eq!((hp.lr, hp.alpha, hp.eps), (1e-3, 0.9, 1e-7));
    /// ```
    pub fn keras() -> Self {
        Hyperparameters {
            lr: 1e-3,
            alpha: 0.9,
            eps: 1e-7,
            semantics: Semantics::Keras(KerasOptions::default()),
            ..Default::default()
        }
    }

    /// Checks every value as a step would (for `f64` elements, the widest type).
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`] naming the first bad value.
    pub fn validate(&self) -> Result<(), Error> {
        Coefficients::<f64>::new(self).map(|_| ())
    }

    /// The value a new `square_avg` starts from: optax's `initial_scale`, 0 otherwise (PyTorch,
    /// Keras).
    ///
    /// ```
    /// use rmsprop_simd::{Hyperparameters, OptaxOptions, Semantics};
    /// assert_eq!(Hyperparameters::default().initial_square_avg(), 0.0);
    /// let o = OptaxOptions { initial_scale: 1.0, ..Default::default() };
    /// let hp = Hyperparameters { semantics: Semantics::Optax(o), ..Hyperparameters::optax(1e-3) };
    /// assert_eq!(hp.initial_square_avg(), 1.0);
    /// ```
    pub fn initial_square_avg(&self) -> f64 {
        match self.semantics {
            Semantics::Optax(o) => o.initial_scale,
            _ => 0.0,
        }
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
    /// The learning rate itself (Keras's arithmetic: `T(f32(lr))` with
    /// [`KerasOptions::lr_through_f32`], else `T(lr)`).
    pub lr: T,
    /// optax's bias correction `T(1 - decay^step)` (the power in `f64`); 1 without it.
    pub bias_correction: T,
    /// Which arithmetic, with the switches that change its shape.
    pub rule: Rule,
}

/// The arithmetic of a step, as the kernel specialises it: [`Semantics`] without the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `torch.optim.RMSprop`.
    PyTorch,
    /// `optax.rmsprop`.
    Optax {
        /// `eps` inside the square root.
        eps_in_sqrt: bool,
        /// Nesterov momentum.
        nesterov: bool,
        /// Divide the averages by [`Coefficients::bias_correction`].
        bias_correction: bool,
    },
    /// Keras 3's RMSprop.
    Keras,
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
        let (rule, lr, bias_correction) = match hp.semantics {
            Semantics::PyTorch => (Rule::PyTorch, T::from_f64(hp.lr), T::one()),
            Semantics::Optax(o) => {
                checked::<T>("initial_scale", o.initial_scale)?;
                if hp.weight_decay != 0.0 {
                    return Err(Error::InvalidHyperparameter {
                        name: "weight_decay",
                        value: hp.weight_decay,
                        reason:
                            "optax's rmsprop has no weight decay (chain optax.add_decayed_weights)",
                    });
                }
                let bc = if o.bias_correction {
                    if hp.step == 0 {
                        return Err(Error::InvalidHyperparameter {
                            name: "step",
                            value: 0.0,
                            reason: "must be >= 1 with optax's bias_correction (the step's number)",
                        });
                    }
                    T::from_f64(1.0 - libm::pow(hp.alpha, hp.step as f64))
                } else {
                    T::one()
                };
                let rule = Rule::Optax {
                    eps_in_sqrt: o.eps_in_sqrt,
                    nesterov: o.nesterov && hp.momentum > 0.0,
                    bias_correction: o.bias_correction,
                };
                (rule, T::from_f64(hp.lr), bc)
            }
            Semantics::Keras(o) => {
                if o.lr_through_f32 && !(hp.lr as f32).is_finite() {
                    return Err(Error::InvalidHyperparameter {
                        name: "lr",
                        value: hp.lr,
                        reason: "overflows float32, where Keras keeps the learning rate",
                    });
                }
                let lr = if o.lr_through_f32 {
                    T::from_f64(hp.lr as f32 as f64)
                } else {
                    T::from_f64(hp.lr)
                };
                (Rule::Keras, lr, T::one())
            }
        };
        if hp.maximize && rule != Rule::PyTorch {
            return Err(Error::InvalidHyperparameter {
                name: "maximize",
                value: 1.0,
                reason: "is PyTorch's only (optax and Keras minimise)",
            });
        }
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
            lr,
            bias_correction,
            rule,
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

pub(crate) fn checked<T: Element>(name: &'static str, value: f64) -> Result<T, Error> {
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
