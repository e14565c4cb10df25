//! Fused RMSprop optimizer step (PyTorch's `torch.optim.RMSprop`) over contiguous `f32`/`f64`
//! buffers, in one pass, dispatched at run time to AVX-512, AVX2+FMA, NEON or scalar code.
//!
//! One step reads each parameter, gradient and state element once and writes each parameter and
//! state element once: weight decay, the square-average EMA, optional centering, `sqrt + eps` and
//! momentum are fused. Every backend equals the scalar [`reference`](mod@reference) bit for bit, and the
//! reference follows PyTorch 2.15's CPU operation order (see [`reference`](mod@reference) for the exact
//! arithmetic and `README.md` for the numerics contract).
//!
//! ```
//! use rmsprop_simd::{step, Hyperparameters, State};
//!
//! let hp = Hyperparameters { lr: 1e-3, momentum: 0.9, ..Default::default() };
//! let mut params = vec![0.5f32; 1000];
//! let grads = vec![0.1f32; 1000];
//! let mut square_avg = vec![0.0f32; 1000];
//! let mut momentum_buffer = vec![0.0f32; 1000];
//!
//! let state = State::new(&mut square_avg).with_momentum_buffer(&mut momentum_buffer);
//! step(&hp, &mut params, &grads, state)?;
//! assert!(params[0] < 0.5);
//! # Ok::<(), rmsprop_simd::Error>(())
//! ```
//!
//! To force an implementation or keep the step on the calling thread, use a [`Kernel`].
//!
//! # Features
//! - `std` (default): std's `fma`/`sqrt` and OS-assisted CPU detection; without it the crate is
//!   `#![no_std]` (no allocation either), `libm` supplies the scalar `fma`/`sqrt` (also correctly
//!   rounded), and the step always runs on the calling thread.
//! - `rayon` (default, implies `std`): large buffers are split across the caller's current rayon
//!   pool (see [`Threading`]).
//! - `safetensors` (default, implies `std`): [`RmsProp::save_state`] / [`RmsProp::load_state`],
//!   the optimizer state under PyTorch's `state_dict` names. ([`RmsProp`] itself needs `std`.)
//! - `num-complex`: `complex::view_as_real(_mut)`, for `Complex<f32>` / `Complex<f64>` tensors.
//!
//! The C ABI is the workspace's `rmsprop-simd-capi` crate (`capi/`), the Python package `python/`.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]
// The only `unsafe` is the inline assembly of `fpenv.rs` (reading and setting the caller's FTZ/DAZ
// for parallel tasks), which opts in with an `allow`; the C ABI crate (`capi/`) holds the FFI.
#![deny(unsafe_code)]

mod backend;
mod element;
mod error;
mod fused;
mod grads;
mod hyper;
mod kernel;
#[cfg(feature = "std")]
mod many;
mod mixed;
pub mod reference;
mod sqrt;
pub mod storage;

#[cfg(feature = "rayon")]
#[allow(unsafe_code)]
mod fpenv;
mod threading;

#[cfg(feature = "num-complex")]
pub mod complex;
#[cfg(feature = "std")]
mod optimizer;

#[cfg(feature = "safetensors")]
pub use optimizer::{header_limit, GroupKeyProblem, StateFileError, SCHEDULER_KEYS};
#[cfg(feature = "std")]
pub use optimizer::{OptimizerError, ParamGroup, RmsProp, TensorState};

pub use backend::{Backend, BackendKind};
pub use element::Element;
pub use error::{Buffer, Error};
pub use grads::{clip_coefficient, GradSlice, NormType};
pub use hyper::{Coefficients, Hyperparameters, KerasOptions, OptaxOptions, Rule, Semantics};
#[cfg(feature = "std")]
pub use many::{SliceMut, TensorStepWith};
pub use storage::{bf16, f16, Format, ParamsCopy, Rounding, StepOptions, Storage};
#[cfg(feature = "rayon")]
pub use threading::run_in_pool;
pub use threading::{Threading, CHUNK_ALIGN, PARALLEL_MIN_LEN};

use kernel::Buffers;
use mixed::{Dst, MixedBuffers, Prep, Scale, Src};

/// The optimizer state of one parameter buffer, under PyTorch's names. Each buffer has the
/// length of the parameters and starts at zero, as in PyTorch.
///
/// `grad_avg` must be given exactly when `centered`, `momentum_buffer` exactly when
/// `momentum > 0` (see [`Hyperparameters::uses_state`]); anything else is an error.
///
/// ```
/// use rmsprop_simd::State;
/// let (mut v, mut ga) = (vec![0.0f64; 3], vec![0.0f64; 3]);
/// let state = State::new(&mut v).with_grad_avg(&mut ga);
/// assert!(state.grad_avg.is_some() && state.momentum_buffer.is_none());
/// ```
#[derive(Debug)]
pub struct State<'a, T> {
    /// Exponential average of the squared gradient (always used).
    pub square_avg: &'a mut [T],
    /// Exponential average of the gradient (`centered` only).
    pub grad_avg: Option<&'a mut [T]>,
    /// Momentum buffer (`momentum > 0` only).
    pub momentum_buffer: Option<&'a mut [T]>,
}

impl<'a, T> State<'a, T> {
    /// State with only `square_avg` (plain RMSprop).
    pub fn new(square_avg: &'a mut [T]) -> Self {
        State {
            square_avg,
            grad_avg: None,
            momentum_buffer: None,
        }
    }

    /// Adds the `grad_avg` buffer (for `centered`).
    pub fn with_grad_avg(mut self, grad_avg: &'a mut [T]) -> Self {
        self.grad_avg = Some(grad_avg);
        self
    }

    /// Adds the `momentum_buffer` (for `momentum > 0`).
    pub fn with_momentum_buffer(mut self, momentum_buffer: &'a mut [T]) -> Self {
        self.momentum_buffer = Some(momentum_buffer);
        self
    }
}

/// Checks everything a step needs before anything is written; returns the rounded coefficients.
pub(crate) fn validate<T: Element, P, G, S>(
    hp: &Hyperparameters,
    params: &[P],
    grads: &[G],
    state: &State<'_, S>,
) -> Result<Coefficients<T>, Error> {
    validate_lens(hp, &lens_of(params, grads, state))
}

/// The lengths of one tensor's buffers (`None`: not given).
pub(crate) struct Lens {
    pub params: usize,
    pub grads: usize,
    pub square_avg: usize,
    pub grad_avg: Option<usize>,
    pub momentum_buffer: Option<usize>,
}

/// The lengths of a step's buffers.
fn lens_of<P, G, S>(params: &[P], grads: &[G], state: &State<'_, S>) -> Lens {
    Lens {
        params: params.len(),
        grads: grads.len(),
        square_avg: state.square_avg.len(),
        grad_avg: state.grad_avg.as_ref().map(|s| s.len()),
        momentum_buffer: state.momentum_buffer.as_ref().map(|s| s.len()),
    }
}

/// [`validate`] on the buffers' lengths.
fn validate_lens<T: Element>(hp: &Hyperparameters, lens: &Lens) -> Result<Coefficients<T>, Error> {
    let k = Coefficients::<T>::new(hp)?;
    let expected = lens.params;
    let check = |buffer: Buffer, needed: bool, given: Option<usize>| match (needed, given) {
        (true, None) => Err(Error::MissingState { buffer }),
        (false, Some(_)) => Err(Error::UnexpectedState { buffer }),
        (_, Some(actual)) if actual != expected => Err(Error::LengthMismatch {
            buffer,
            expected,
            actual,
        }),
        _ => Ok(()),
    };
    check(Buffer::Grads, true, Some(lens.grads))?;
    check(Buffer::SquareAvg, true, Some(lens.square_avg))?;
    let (centered, momentum) = hp.uses_state();
    check(Buffer::GradAvg, centered, lens.grad_avg)?;
    check(Buffer::MomentumBuffer, momentum, lens.momentum_buffer)?;
    Ok(k)
}

/// [`validate`], plus the options and the parameter copy: the coefficients and the gradient
/// pre-processing in the compute type.
pub(crate) fn validate_with<T: Element, P, G, S>(
    hp: &Hyperparameters,
    options: &StepOptions,
    params: &[P],
    grads: &[G],
    state: &State<'_, S>,
    copy: Option<&ParamsCopy<'_>>,
) -> Result<(Coefficients<T>, Prep<T>), Error> {
    validate_lens_with(hp, options, &lens_of(params, grads, state), copy)
}

/// [`validate_with`] on the buffers' lengths.
pub(crate) fn validate_lens_with<T: Element>(
    hp: &Hyperparameters,
    options: &StepOptions,
    lens: &Lens,
    copy: Option<&ParamsCopy<'_>>,
) -> Result<(Coefficients<T>, Prep<T>), Error> {
    let k = validate_lens::<T>(hp, lens)?;
    let prep = prep_for::<T>(options)?;
    if let Some(copy) = copy {
        if T::FORMAT != Format::F32 {
            return Err(Error::Unsupported {
                reason: "a 16-bit parameter copy needs f32, bf16 or f16 parameters, not f64",
            });
        }
        if copy.len() != lens.params {
            return Err(Error::LengthMismatch {
                buffer: Buffer::ParamsCopy,
                expected: lens.params,
                actual: copy.len(),
            });
        }
    }
    Ok((k, prep))
}

/// The options in the compute type `T`, validated.
fn prep_for<T: Element>(options: &StepOptions) -> Result<Prep<T>, Error> {
    let s = hyper::checked::<T>("grad_scale", options.grad_scale)?;
    if s == T::zero() {
        return Err(Error::InvalidHyperparameter {
            name: "grad_scale",
            value: options.grad_scale,
            reason: "must be > 0 once rounded to the compute type",
        });
    }
    let clip = match options.clip_value {
        Some(c) => Some(hyper::checked::<T>("clip_value", c)?),
        None => None,
    };
    let m = hyper::checked::<T>("grad_multiplier", options.grad_multiplier)?;
    let scale = if s == T::one() {
        Scale::None
    } else {
        // Multiplying by an exact, normal reciprocal gives the bits of the division (both are
        // the correctly rounded g/s): true for every power of two whose reciprocal is normal.
        let s64 = s.to_f64();
        let inv = 1.0 / s64;
        let power_of_two = s64.to_bits() & ((1u64 << 52) - 1) == 0;
        if power_of_two && T::from_f64(inv).to_f64() == inv && inv >= T::MIN_POSITIVE.to_f64() {
            Scale::Mul(T::from_f64(inv))
        } else {
            Scale::Div(s)
        }
    };
    Ok(Prep {
        scale,
        divisor: s,
        clip,
        multiplier: (m != T::one()).then_some(m),
        rounding: options.rounding,
    })
}

/// A storage slice as the mixed pass reads it.
fn src<P: Storage>(s: &[P]) -> Src<'_, P::Compute> {
    match P::FORMAT {
        Format::Bf16 => Src::Bf16(bytemuck::cast_slice(s)),
        Format::F16 => Src::F16(bytemuck::cast_slice(s)),
        // `P` is its own compute type.
        Format::F32 | Format::F64 => Src::Native(bytemuck::cast_slice(s)),
    }
}

/// A storage slice as the mixed pass writes it.
fn dst<P: Storage>(s: &mut [P]) -> Dst<'_, P::Compute> {
    match P::FORMAT {
        Format::Bf16 => Dst::Bf16(bytemuck::cast_slice_mut(s)),
        Format::F16 => Dst::F16(bytemuck::cast_slice_mut(s)),
        Format::F32 | Format::F64 => Dst::Native(bytemuck::cast_slice_mut(s)),
    }
}

/// A step's buffers for the plain kernel (every buffer stored in its compute type).
fn plain_buffers<'a, P, G, S>(
    params: &'a mut [P],
    grads: &'a [G],
    state: State<'a, S>,
) -> Buffers<'a, P::Compute>
where
    P: Storage,
    G: Storage<Compute = P::Compute>,
    S: Storage<Compute = P::Compute>,
{
    Buffers {
        params: bytemuck::cast_slice_mut(params),
        grads: bytemuck::cast_slice(grads),
        square_avg: bytemuck::cast_slice_mut(state.square_avg),
        grad_avg: state
            .grad_avg
            .map_or(&mut [][..], |s| bytemuck::cast_slice_mut(s)),
        momentum_buffer: state
            .momentum_buffer
            .map_or(&mut [][..], |s| bytemuck::cast_slice_mut(s)),
    }
}

/// A step's buffers for the mixed pass (any storage, gradient pre-processing, rounding).
fn mixed_buffers<'a, P, G, S>(
    params: &'a mut [P],
    grads: &'a [G],
    state: State<'a, S>,
    params_copy: Option<ParamsCopy<'a>>,
    prep: Prep<P::Compute>,
) -> MixedBuffers<'a, P::Compute>
where
    P: Storage,
    G: Storage<Compute = P::Compute>,
    S: Storage<Compute = P::Compute>,
{
    MixedBuffers {
        params: dst(params),
        grads: src(grads),
        square_avg: dst(state.square_avg),
        grad_avg: state.grad_avg.map(|s| dst(s)),
        momentum_buffer: state.momentum_buffer.map(|s| dst(s)),
        copy: params_copy.map(Dst::copy),
        prep,
        offset: 0,
    }
}

/// A configured step: which [`Backend`] and which [`Threading`]. `Kernel::default()` is the best
/// backend for this CPU, parallel.
///
/// ```
/// use rmsprop_simd::{Backend, Hyperparameters, Kernel, State, Threading};
///
/// let kernel = Kernel::new().with_backend(Backend::scalar()).with_threading(Threading::Serial);
/// let (mut p, g, mut v) = (vec![1.0f64; 10], vec![1.0f64; 10], vec![0.0f64; 10]);
/// kernel.step(&Hyperparameters::default(), &mut p, &g, State::new(&mut v))?;
/// # Ok::<(), rmsprop_simd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    backend: Backend,
    /// The backend of passes with 16-bit storage ([`Backend::detect_mixed`] by default).
    mixed_backend: Backend,
    threading: Threading,
    parallel_min_len: usize,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            backend: Backend::detect(),
            mixed_backend: Backend::detect_mixed(),
            threading: Threading::Parallel,
            parallel_min_len: PARALLEL_MIN_LEN,
        }
    }
}

impl Kernel {
    /// The best backend for this CPU ([`Backend::detect`]), [`Threading::Parallel`].
    pub fn new() -> Self {
        Kernel::default()
    }

    /// The same kernel with another parallel threshold: under [`Threading::Parallel`], buffers of
    /// at least `min_len` elements (default [`PARALLEL_MIN_LEN`]) are split, into chunks of at
    /// least `min_len / 2` (rounded to [`CHUNK_ALIGN`]). Values below `2 * CHUNK_ALIGN` are raised
    /// to it. Results do not depend on it; only speed does.
    pub fn with_parallel_min_len(self, min_len: usize) -> Self {
        Kernel {
            parallel_min_len: min_len.max(2 * CHUNK_ALIGN),
            ..self
        }
    }

    /// The parallel threshold (see [`Kernel::with_parallel_min_len`]).
    pub fn parallel_min_len(&self) -> usize {
        self.parallel_min_len
    }

    /// The same kernel on `backend`, for every pass (also those with 16-bit storage).
    pub fn with_backend(self, backend: Backend) -> Self {
        Kernel {
            backend,
            mixed_backend: backend,
            ..self
        }
    }

    /// The same kernel with `threading`.
    pub fn with_threading(self, threading: Threading) -> Self {
        Kernel { threading, ..self }
    }

    /// The backend this kernel runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The backend of passes with a 16-bit buffer (bf16/f16 params, grads, state or copy):
    /// [`Backend::detect_mixed`] unless [`Kernel::with_backend`] chose one for every pass.
    pub fn mixed_backend(&self) -> Backend {
        self.mixed_backend
    }

    /// The kernel a pass runs on: this one, with [`Kernel::mixed_backend`] for every pass when
    /// the pass has a 16-bit buffer.
    pub(crate) fn for_pass(self, sixteen_bit: bool) -> Kernel {
        if sixteen_bit {
            Kernel {
                backend: self.mixed_backend,
                ..self
            }
        } else {
            self
        }
    }

    /// The threading policy.
    pub fn threading(&self) -> Threading {
        self.threading
    }

    /// One RMSprop step: updates `params` and `state` in place from `grads` (see [`step`]).
    /// Buffers may be stored as `f32`, `bf16` or `f16` in any mix (computed in `f32`), or all
    /// `f64`; 16-bit results are rounded to nearest-even. [`Kernel::step_with`] adds gradient
    /// scaling, clipping, stochastic rounding and a 16-bit parameter copy.
    ///
    /// # Errors
    /// [`Error::InvalidHyperparameter`], [`Error::LengthMismatch`], [`Error::MissingState`] or
    /// [`Error::UnexpectedState`]; all checks run before any write, so on error every buffer is
    /// unchanged.
    pub fn step<P, G, S>(
        &self,
        hp: &Hyperparameters,
        params: &mut [P],
        grads: &[G],
        state: State<'_, S>,
    ) -> Result<(), Error>
    where
        P: Storage,
        G: Storage<Compute = P::Compute>,
        S: Storage<Compute = P::Compute>,
    {
        self.step_with(hp, &StepOptions::default(), params, grads, state, None)
    }

    /// One step with gradient pre-processing, rounding and an optional 16-bit parameter copy,
    /// all fused into the single pass (see [`StepOptions`], [`ParamsCopy`]). Each stored value is
    /// widened exactly to the compute type, the step of [`reference::step_element`] runs, and
    /// each result is rounded to its buffer's storage (16-bit parameters and state as
    /// `options.rounding` says, the copy to nearest-even). Every backend, thread count and
    /// chunking gives the bits of [`reference::step_with`].
    ///
    /// ```
    /// use rmsprop_simd::{bf16, Hyperparameters, Kernel, ParamsCopy, State, StepOptions};
    ///
    /// // f32 master weights, bf16 gradients, f32 state, a bf16 copy for the device
    /// let mut master = vec![1.0f32; 100];
    /// let grads = vec![bf16::from_f32(0.5); 100];
    /// let mut v = vec![0.0f32; 100];
    /// let mut copy = vec![bf16::ZERO; 100];
    /// Kernel::new().step_with(
    ///     &Hyperparameters::default(),
    ///     &StepOptions::default(),
    ///     &mut master,
    ///     &grads,
    ///     State::new(&mut v),
    ///     Some(ParamsCopy::from(&mut copy[..])),
    /// )?;
    /// assert_eq!(copy[0], bf16::from_f32(master[0]));
    /// # Ok::<(), rmsprop_simd::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Kernel::step`], and [`Error::InvalidHyperparameter`] for an option out of range
    /// (`grad_scale` not finite and > 0, `clip_value` or `grad_multiplier` negative or not
    /// finite), [`Error::LengthMismatch`] for the copy, [`Error::Unsupported`] for a copy of
    /// `f64` parameters. Nothing is written on error.
    pub fn step_with<P, G, S>(
        &self,
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
        // Every buffer in the compute type (the 16-bit formats are never a compute type).
        let native = P::FORMAT == G::FORMAT && P::FORMAT == S::FORMAT && !P::FORMAT.is_16_bit();
        if native && params_copy.is_none() && options.is_plain_gradient() {
            // The plain kernel.
            threading::run_one(self, k, plain_buffers(params, grads, state));
        } else {
            let kernel = self.for_pass(!native || params_copy.is_some());
            let bufs = mixed_buffers(params, grads, state, params_copy, prep);
            threading::run_one(&kernel, k, bufs);
        }
        Ok(())
    }
}

/// One tensor of a multi-tensor step ([`Kernel::step_many`]): its hyperparameters (tensors of
/// one parameter group share them), its buffers and its state.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct TensorStep<'a, T> {
    /// The hyperparameters of this tensor's group.
    pub hyperparameters: &'a Hyperparameters,
    /// The parameters, updated in place.
    pub params: &'a mut [T],
    /// The gradients.
    pub grads: &'a [T],
    /// The state buffers, updated in place.
    pub state: State<'a, T>,
}

/// Why [`Kernel::step_many`] or [`Kernel::step_many_with`] refused its tensors: the first
/// invalid tensor and its error. Nothing was written.
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq)]
pub struct StepManyError {
    /// The tensor: its position in the order given ([`Kernel::step_many`]), or its
    /// [`TensorStepWith::index`] ([`Kernel::step_many_with`]).
    pub tensor: usize,
    /// What is wrong with it.
    pub error: Error,
}

#[cfg(feature = "std")]
impl core::fmt::Display for StepManyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "tensor {}: {}", self.tensor, self.error)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StepManyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(feature = "std")]
impl Kernel {
    /// One step over many tensors, as one balanced dispatch: under [`Threading::Parallel`],
    /// when the tensors add up to at least [`Kernel::parallel_min_len`] elements, large tensors
    /// are cut into tasks and small ones batched (see `src/threading.rs`); otherwise everything
    /// runs on the calling thread. Bit-identical to one [`Kernel::step`] per tensor. This is
    /// the shape of PyTorch's fused `_foreach` optimizers: one call per parameter group (or per
    /// model, since each tensor carries its own hyperparameters).
    ///
    /// ```
    /// use rmsprop_simd::{Hyperparameters, Kernel, State, TensorStep};
    /// let hp = Hyperparameters::default();
    /// let (mut w, mut b) = (vec![1.0f32; 300], vec![0.5f32; 3]);
    /// let (gw, gb) = (vec![0.1f32; 300], vec![0.2f32; 3]);
    /// let (mut vw, mut vb) = (vec![0.0f32; 300], vec![0.0f32; 3]);
    /// Kernel::new().step_many(vec![
    ///     TensorStep { hyperparameters: &hp, params: &mut w, grads: &gw, state: State::new(&mut vw) },
    ///     TensorStep { hyperparameters: &hp, params: &mut b, grads: &gb, state: State::new(&mut vb) },
    /// ])?;
    /// # Ok::<(), rmsprop_simd::StepManyError>(())
    /// ```
    ///
    /// # Errors
    /// The first tensor whose step [`Kernel::step`] would refuse, with its error; every tensor
    /// is checked before any is written, so on error every buffer is unchanged.
    pub fn step_many<T: Element>(
        &self,
        steps: Vec<TensorStep<'_, T>>,
    ) -> Result<(), StepManyError> {
        let mut coeffs = Vec::with_capacity(steps.len());
        for (tensor, s) in steps.iter().enumerate() {
            let k = validate::<T, T, T, T>(s.hyperparameters, s.params, s.grads, &s.state)
                .map_err(|error| StepManyError { tensor, error })?;
            coeffs.push(k);
        }
        let pieces = steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    i,
                    Buffers {
                        params: s.params,
                        grads: s.grads,
                        square_avg: s.state.square_avg,
                        grad_avg: s.state.grad_avg.unwrap_or(&mut []),
                        momentum_buffer: s.state.momentum_buffer.unwrap_or(&mut []),
                    },
                )
            })
            .collect();
        threading::run_many(self, &coeffs, pieces);
        Ok(())
    }
}

/// One RMSprop step on the best backend for this CPU, parallel for large buffers:
/// `Kernel::new().step(..)`.
///
/// `params` and the `state` buffers are updated in place from `grads`, with the arithmetic of
/// [`reference::step_element`] applied to every element. `hp.lr` (and every other value) may
/// change from one call to the next. Empty buffers are a valid no-op.
///
/// # Errors
/// [`Error::InvalidHyperparameter`], [`Error::LengthMismatch`], [`Error::MissingState`] or
/// [`Error::UnexpectedState`]; all checks run before any write, so on error every buffer is
/// unchanged.
///
/// ```
/// use rmsprop_simd::{step, Hyperparameters, State};
///
/// let mut hp = Hyperparameters { centered: true, ..Default::default() };
/// let (mut p, g) = (vec![1.0f32; 100], vec![0.25f32; 100]);
/// let (mut v, mut ga) = (vec![0.0f32; 100], vec![0.0f32; 100]);
/// for epoch in 0..3 {
///     hp.lr = 1e-2 * 0.5f64.powi(epoch); // a schedule
///     step(&hp, &mut p, &g, State::new(&mut v).with_grad_avg(&mut ga))?;
/// }
/// # Ok::<(), rmsprop_simd::Error>(())
/// ```
pub fn step<P, G, S>(
    hp: &Hyperparameters,
    params: &mut [P],
    grads: &[G],
    state: State<'_, S>,
) -> Result<(), Error>
where
    P: Storage,
    G: Storage<Compute = P::Compute>,
    S: Storage<Compute = P::Compute>,
{
    Kernel::new().step(hp, params, grads, state)
}

/// The README's Rust examples, compiled and run as doctests so they cannot go stale (they use
/// `RmsProp::save_state`, hence the `safetensors` feature).
#[cfg(all(doctest, feature = "safetensors"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Switches for tests only (not part of the API; no semver guarantee).
#[doc(hidden)]
pub mod __testing {
    /// `false` makes the all-bf16 loops on AVX-512 round with integer operations even where the
    /// CPU has AVX512-BF16's conversion instruction (both give the same bits; tests run both).
    pub fn set_bf16_instruction(enabled: bool) {
        crate::fused::NO_BF16_INSTRUCTION.store(!enabled, core::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the all-bf16 loops use AVX512-BF16's conversion instruction on this CPU now.
    pub fn bf16_instruction() -> bool {
        crate::fused::bf16_instruction()
    }
}
