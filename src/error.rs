//! The typed error every fallible call returns; when it is returned, no buffer has been written.

use core::fmt;

/// A buffer of a step, under PyTorch's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Buffer {
    /// The parameters.
    Params,
    /// The gradients.
    Grads,
    /// `square_avg` (always used).
    SquareAvg,
    /// `grad_avg` (`centered` only).
    GradAvg,
    /// `momentum_buffer` (`momentum > 0` only).
    MomentumBuffer,
    /// The 16-bit copy of the new parameters ([`crate::ParamsCopy`]).
    ParamsCopy,
}

impl Buffer {
    /// PyTorch's name: `params`, `grads`, `square_avg`, `grad_avg` or `momentum_buffer`
    /// (and `params_copy` for the 16-bit parameter copy).
    ///
    /// ```
    /// assert_eq!(rmsprop_simd::Buffer::SquareAvg.name(), "square_avg");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Buffer::Params => "params",
            Buffer::Grads => "grads",
            Buffer::SquareAvg => "square_avg",
            Buffer::GradAvg => "grad_avg",
            Buffer::MomentumBuffer => "momentum_buffer",
            Buffer::ParamsCopy => "params_copy",
        }
    }

    /// The three state buffers, in PyTorch's order.
    pub const STATE: [Buffer; 3] = [Buffer::SquareAvg, Buffer::GradAvg, Buffer::MomentumBuffer];
}

impl fmt::Display for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a step was refused. Every check runs before the first write, so when a function of this
/// crate returns an `Error`, every buffer passed to it is exactly as it was.
///
/// ```
/// use rmsprop_simd::{step, Error, Hyperparameters, State};
///
/// let hp = Hyperparameters { lr: -1.0, ..Hyperparameters::default() };
/// let (mut p, g, mut v) = ([1.0f32; 4], [0.5f32; 4], [0.0f32; 4]);
/// let err = step(&hp, &mut p, &g, State::new(&mut v)).unwrap_err();
/// assert!(matches!(err, Error::InvalidHyperparameter { name: "lr", .. }));
/// assert_eq!(p, [1.0; 4]); // untouched
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A hyperparameter is out of range: negative, NaN, infinite, or not representable (finite)
    /// in the element type once rounded to it.
    InvalidHyperparameter {
        /// PyTorch's name for it: `lr`, `alpha`, `eps`, `weight_decay` or `momentum`.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A buffer's length differs from the length of `params`.
    LengthMismatch {
        /// Which buffer: grads, square_avg, grad_avg or momentum_buffer.
        buffer: Buffer,
        /// The length of `params`.
        expected: usize,
        /// The length of this buffer.
        actual: usize,
    },
    /// A state buffer the hyperparameters need was not given.
    MissingState {
        /// `grad_avg` (needed when `centered`) or `momentum_buffer` (needed when `momentum > 0`).
        buffer: Buffer,
    },
    /// A state buffer was given that the hyperparameters do not use: almost certainly a caller
    /// bug (state that would silently stop being updated), so it is refused.
    UnexpectedState {
        /// `grad_avg` (only with `centered`) or `momentum_buffer` (only with `momentum > 0`).
        buffer: Buffer,
    },
    /// A combination of storage formats or options this crate does not implement.
    Unsupported {
        /// What, and what to do instead.
        reason: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidHyperparameter {
                name,
                value,
                reason,
            } => {
                write!(f, "invalid hyperparameter {name} = {value:?}: {reason}")
            }
            Error::LengthMismatch {
                buffer,
                expected,
                actual,
            } => write!(
                f,
                "length mismatch: {buffer} has {actual} elements but params has {expected}"
            ),
            Error::MissingState { buffer } => {
                let why = state_condition(buffer);
                write!(
                    f,
                    "missing state buffer {buffer}: it is required when {why}"
                )
            }
            Error::UnexpectedState { buffer } => {
                let why = state_condition(buffer);
                write!(
                    f,
                    "unexpected state buffer {buffer}: it is used only when {why}"
                )
            }
            Error::Unsupported { reason } => write!(f, "unsupported: {reason}"),
        }
    }
}

fn state_condition(buffer: &Buffer) -> &'static str {
    match buffer {
        Buffer::GradAvg => "centered = true",
        Buffer::MomentumBuffer => "momentum > 0",
        _ => "the hyperparameters ask for it",
    }
}

impl core::error::Error for Error {}
