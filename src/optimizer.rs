//! The optimizer over a whole model: parameter groups, lazily allocated state, one balanced
//! parallel dispatch over every tensor, and PyTorch-compatible state in safetensors.

use crate::{
    Buffer, Coefficients, Element, Error, Format, Hyperparameters, Kernel, ParamsCopy, Rounding,
    State, StepOptions, Storage,
};
use std::collections::BTreeMap;
use std::fmt;

#[cfg(feature = "safetensors")]
pub use state_file::{header_limit, GroupKeyProblem, StateFileError, SCHEDULER_KEYS};

/// A set of tensors sharing hyperparameters (PyTorch's `param_groups` entry). `params` holds
/// tensor indices into the optimizer's list.
///
/// ```
/// use rmsprop_simd::{Hyperparameters, ParamGroup};
/// let group = ParamGroup::new(Hyperparameters { lr: 1e-3, ..Default::default() }, vec![0, 1]);
/// assert!(group.extra.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamGroup {
    /// The group's hyperparameters; change them between steps (schedulers).
    pub hyperparameters: Hyperparameters,
    /// Indices of the tensors in this group.
    pub params: Vec<usize>,
    /// Keys that PyTorch's LR schedulers add to a group (`initial_lr`, `max_lr`, `min_lr`,
    /// `base_momentum`, `max_momentum`: see `SCHEDULER_KEYS`), kept from a loaded state and
    /// written back on save, so that a scheduler resumed from this crate's file finds them. The
    /// step does not read them.
    pub extra: BTreeMap<String, f64>,
}

impl ParamGroup {
    /// A group of `params` with `hyperparameters` and no scheduler keys.
    pub fn new(hyperparameters: Hyperparameters, params: Vec<usize>) -> Self {
        ParamGroup {
            hyperparameters,
            params,
            extra: BTreeMap::new(),
        }
    }
}

/// The state PyTorch keeps for one tensor, created on the tensor's first step with a gradient.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorState<T> {
    /// Steps taken with a gradient (PyTorch's `state[p]['step']`).
    pub step: u64,
    /// Exponential average of the squared gradient.
    pub square_avg: Vec<T>,
    /// Exponential average of the gradient (present once the group has been `centered`).
    pub grad_avg: Option<Vec<T>>,
    /// Momentum buffer (present once the group has had `momentum > 0`).
    pub momentum_buffer: Option<Vec<T>>,
}

/// Why the optimizer refused a call. Whenever one is returned, parameters, state, step counts and
/// groups are exactly as they were.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum OptimizerError {
    /// A group's hyperparameters are invalid for the element type.
    InvalidHyperparameter {
        /// The group's index.
        group: usize,
        /// What is wrong.
        error: Error,
    },
    /// `params` or `grads` does not have one entry per tensor.
    TensorCount {
        /// `params` or `grads`.
        what: &'static str,
        /// The number of tensors the optimizer was built with.
        expected: usize,
        /// The number given.
        actual: usize,
    },
    /// A tensor's length is not the one it had when the optimizer was built.
    ShapeChanged {
        /// The tensor's index.
        tensor: usize,
        /// `params`, `grads`, or a state buffer when loading.
        buffer: Buffer,
        /// The shape recorded at construction.
        expected: Vec<usize>,
        /// What was given (for a slice: its length).
        actual: Vec<usize>,
    },
    /// A shape whose element count does not fit in `usize`.
    ShapeOverflow {
        /// The tensor's index.
        tensor: usize,
        /// The shape given.
        shape: Vec<usize>,
    },
    /// The parameter groups do not assign every tensor to exactly one group.
    InvalidGroups(String),
    /// The [`StepOptions`] of [`RmsProp::step_with`] are invalid.
    InvalidOptions(Error),
    /// A state file or `param_groups` JSON cannot be used: the variant says why.
    #[cfg(feature = "safetensors")]
    StateFile(StateFileError),
}

impl fmt::Display for OptimizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimizerError::InvalidHyperparameter { group, error } => {
                write!(f, "parameter group {group}: {error}")
            }
            OptimizerError::TensorCount { what, expected, actual } => {
                write!(f, "{what} has {actual} tensors, the optimizer has {expected}")
            }
            OptimizerError::ShapeChanged { tensor, buffer, expected, actual } => write!(
                f,
                "tensor {tensor}: {buffer} has shape {actual:?}, expected {expected:?} (its shape when \
                 the optimizer was built)"
            ),
            OptimizerError::ShapeOverflow { tensor, shape } => write!(
                f,
                "tensor {tensor}: shape {shape:?} has more elements than usize can count"
            ),
            OptimizerError::InvalidGroups(why) => write!(f, "invalid parameter groups: {why}"),
            OptimizerError::InvalidOptions(error) => write!(f, "step options: {error}"),
            #[cfg(feature = "safetensors")]
            OptimizerError::StateFile(why) => write!(f, "unusable optimizer state: {why}"),
        }
    }
}

impl std::error::Error for OptimizerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OptimizerError::InvalidHyperparameter { error, .. }
            | OptimizerError::InvalidOptions(error) => Some(error),
            #[cfg(feature = "safetensors")]
            OptimizerError::StateFile(e) => Some(e),
            _ => None,
        }
    }
}

/// The element count of each shape, or [`OptimizerError::ShapeOverflow`].
fn element_counts(shapes: &[Vec<usize>]) -> Result<Vec<usize>, OptimizerError> {
    shapes
        .iter()
        .enumerate()
        .map(|(tensor, shape)| {
            shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| OptimizerError::ShapeOverflow {
                    tensor,
                    shape: shape.clone(),
                })
        })
        .collect()
}

/// `torch.optim.RMSprop(model.parameters())` for tensors the caller owns: the optimizer owns the
/// state. Tensors are contiguous slices of `T` (`f32` or `f64`); their shapes are given once, at
/// construction, and only matter for saving (and checking) state.
///
/// ```
/// use rmsprop_simd::{Hyperparameters, ParamGroup, RmsProp};
///
/// let shapes = vec![vec![4, 3], vec![3]]; // a weight and a bias
/// let (mut w, mut b) = (vec![0.5f32; 12], vec![0.0f32; 3]);
/// let groups = vec![
///     ParamGroup::new(Hyperparameters { momentum: 0.9, ..Default::default() }, vec![0]),
///     ParamGroup::new(Hyperparameters::default(), vec![1]),
/// ];
/// let mut opt = RmsProp::<f32>::with_groups(shapes, groups)?;
/// let (gw, gb) = (vec![0.1f32; 12], vec![0.2f32; 3]);
/// opt.step(&mut [&mut w, &mut b], &[Some(&gw), Some(&gb)])?;
/// opt.hyperparameters_mut(0).unwrap().lr *= 0.5; // a schedule
/// opt.step(&mut [&mut w, &mut b], &[Some(&gw), None])?; // the bias has no gradient this step
/// assert_eq!(opt.state(0).unwrap().step, 2);
/// assert_eq!(opt.state(1).unwrap().step, 1);
/// # Ok::<(), rmsprop_simd::OptimizerError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RmsProp<T> {
    shapes: Vec<Vec<usize>>,
    lens: Vec<usize>,
    groups: Vec<ParamGroup>,
    /// The group of each tensor.
    group_of: Vec<usize>,
    state: Vec<Option<TensorState<T>>>,
    kernel: Kernel,
}

fn check_groups(n: usize, groups: &[ParamGroup]) -> Result<Vec<usize>, OptimizerError> {
    let mut group_of = vec![usize::MAX; n];
    for (g, group) in groups.iter().enumerate() {
        for &i in &group.params {
            if i >= n {
                return Err(OptimizerError::InvalidGroups(format!(
                    "group {g} names tensor {i}, but there are {n} tensors"
                )));
            }
            if group_of[i] != usize::MAX {
                return Err(OptimizerError::InvalidGroups(format!(
                    "tensor {i} is in groups {} and {g}",
                    group_of[i]
                )));
            }
            group_of[i] = g;
        }
    }
    if let Some(i) = group_of.iter().position(|&g| g == usize::MAX) {
        return Err(OptimizerError::InvalidGroups(format!(
            "tensor {i} is in no group"
        )));
    }
    Ok(group_of)
}

/// Validates every group's hyperparameters for `T`. A group's `step` is not its own (each
/// tensor steps with its own count, from 1), so it is checked as a first step.
fn coefficients<T: Element>(groups: &[ParamGroup]) -> Result<Vec<Coefficients<T>>, OptimizerError> {
    groups
        .iter()
        .enumerate()
        .map(|(group, g)| {
            let hp = Hyperparameters {
                step: g.hyperparameters.step.max(1),
                ..g.hyperparameters
            };
            Coefficients::new(&hp)
                .map_err(|error| OptimizerError::InvalidHyperparameter { group, error })
        })
        .collect()
}

impl<T: Storage> RmsProp<T> {
    /// One group holding every tensor.
    ///
    /// # Errors
    /// [`OptimizerError::InvalidHyperparameter`] if `hyperparameters` is invalid for `T`.
    pub fn new(
        shapes: Vec<Vec<usize>>,
        hyperparameters: Hyperparameters,
    ) -> Result<Self, OptimizerError> {
        let params = (0..shapes.len()).collect();
        Self::with_groups(shapes, vec![ParamGroup::new(hyperparameters, params)])
    }

    /// Parameter groups, each with its own hyperparameters; every tensor in exactly one group.
    ///
    /// # Errors
    /// [`OptimizerError::ShapeOverflow`], [`OptimizerError::InvalidGroups`] or
    /// [`OptimizerError::InvalidHyperparameter`].
    pub fn with_groups(
        shapes: Vec<Vec<usize>>,
        groups: Vec<ParamGroup>,
    ) -> Result<Self, OptimizerError> {
        let lens = element_counts(&shapes)?;
        let group_of = check_groups(shapes.len(), &groups)?;
        coefficients::<T::Compute>(&groups)?;
        let state = vec![None; shapes.len()];
        Ok(RmsProp {
            shapes,
            lens,
            groups,
            group_of,
            state,
            kernel: Kernel::new(),
        })
    }

    /// The same optimizer with another [`Kernel`] (backend, threading, parallel threshold).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The kernel (backend, threading) the steps run on.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// `true` if there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// The shape of each tensor, as given at construction.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// The parameter groups.
    pub fn param_groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The hyperparameters of group `group`, to change between steps (validated at the next
    /// step). `None` if there is no such group.
    pub fn hyperparameters_mut(&mut self, group: usize) -> Option<&mut Hyperparameters> {
        self.groups.get_mut(group).map(|g| &mut g.hyperparameters)
    }

    /// The state of tensor `tensor`, `None` before its first step with a gradient.
    pub fn state(&self, tensor: usize) -> Option<&TensorState<T>> {
        self.state.get(tensor)?.as_ref()
    }

    /// One step over every tensor: `params[i]` is updated from `grads[i]`; a tensor whose
    /// gradient is `None` is left untouched, step count included (as PyTorch does). State is
    /// allocated on a tensor's first step with a gradient, only the buffers its group uses.
    /// The work is split across threads by elements (large tensors in chunks, small ones
    /// batched) on the caller's current rayon pool; the result is bit-identical to stepping each
    /// tensor alone with [`Kernel::step`].
    ///
    /// Parameters and gradients here are stored as the state is; [`RmsProp::step_with`] takes
    /// them in any [`Storage`] of the same compute type (`f32` master weights with `bf16`
    /// gradients...).
    ///
    /// # Errors
    /// [`OptimizerError::TensorCount`], [`OptimizerError::ShapeChanged`] or
    /// [`OptimizerError::InvalidHyperparameter`]; all checked before anything is written.
    pub fn step(
        &mut self,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
    ) -> Result<(), OptimizerError> {
        self.step_with(params, grads, &StepOptions::default())
    }

    /// [`RmsProp::step`] with gradient pre-processing and rounding ([`StepOptions`]: loss-scale
    /// division, clamping, a multiplier such as [`crate::clip_coefficient`]'s; nearest-even or
    /// stochastic rounding of 16-bit params and state), fused into the same pass as
    /// [`Kernel::step_with`] does. Under [`Rounding::Stochastic`] `{ seed, .. }` each tensor
    /// draws its own bits: its own step count replaces `step`, and its index is mixed into the
    /// seed, so no two tensors or steps share a stream.
    ///
    /// ```
    /// use rmsprop_simd::{bf16, Hyperparameters, RmsProp, Rounding, StepOptions};
    /// // bf16 parameters, gradients and state, stochastic rounding
    /// let mut opt = RmsProp::<bf16>::new(vec![vec![4]], Hyperparameters::default())?;
    /// let mut w = vec![bf16::ONE; 4];
    /// let g = vec![bf16::from_f32(0.5); 4];
    /// let sr = StepOptions { rounding: Rounding::Stochastic { seed: 7, step: 0 }, ..Default::default() };
    /// opt.step_with(&mut [&mut w], &[Some(&g)], &sr)?;
    /// assert!(w[0] < bf16::ONE);
    /// # Ok::<(), rmsprop_simd::OptimizerError>(())
    /// ```
    ///
    /// # Errors
    /// As [`RmsProp::step`], and [`OptimizerError::InvalidOptions`] for invalid options.
    pub fn step_with<P, G>(
        &mut self,
        params: &mut [&mut [P]],
        grads: &[Option<&[G]>],
        options: &StepOptions,
    ) -> Result<(), OptimizerError>
    where
        P: Storage<Compute = T::Compute>,
        G: Storage<Compute = T::Compute>,
    {
        self.step_impl(params, grads, None, options)
    }

    /// [`RmsProp::step_with`] that also writes a 16-bit copy of the new parameters in the same
    /// pass: `copies[i]`, when given, receives tensor `i`'s new parameters rounded to bf16 or
    /// f16 (nearest-even), as [`Kernel::step_with`]'s `params_copy` does. This is the master
    /// weights setup of ZeRO-Offload and FSDP's CPU offload: `f32` parameters and state here,
    /// the copy what the device trains with. A tensor without a gradient leaves its copy as it
    /// is.
    ///
    /// ```
    /// use rmsprop_simd::{bf16, Hyperparameters, ParamsCopy, RmsProp, StepOptions};
    /// let mut opt = RmsProp::<f32>::new(vec![vec![4], vec![2]], Hyperparameters::default())?;
    /// let (mut w, mut b) = (vec![1.0f32; 4], vec![0.5f32; 2]);
    /// let (gw, gb) = (vec![bf16::from_f32(0.1); 4], vec![bf16::from_f32(0.2); 2]);
    /// let (mut w16, mut b16) = (vec![bf16::ZERO; 4], vec![bf16::ZERO; 2]);
    /// opt.step_with_copies(
    ///     &mut [&mut w, &mut b],
    ///     &[Some(&gw), Some(&gb)],
    ///     vec![Some(ParamsCopy::from(&mut w16[..])), Some(ParamsCopy::from(&mut b16[..]))],
    ///     &StepOptions::default(),
    /// )?;
    /// assert_eq!(w16[0], bf16::from_f32(w[0]));
    /// # Ok::<(), rmsprop_simd::OptimizerError>(())
    /// ```
    ///
    /// # Errors
    /// As [`RmsProp::step_with`]; [`OptimizerError::TensorCount`] when `copies` does not have
    /// one entry per tensor, [`OptimizerError::ShapeChanged`] (buffer `params_copy`) for a copy
    /// of another length, [`OptimizerError::InvalidOptions`] for a copy of `f64` parameters.
    pub fn step_with_copies<P, G>(
        &mut self,
        params: &mut [&mut [P]],
        grads: &[Option<&[G]>],
        copies: Vec<Option<ParamsCopy<'_>>>,
        options: &StepOptions,
    ) -> Result<(), OptimizerError>
    where
        P: Storage<Compute = T::Compute>,
        G: Storage<Compute = T::Compute>,
    {
        self.step_impl(params, grads, Some(copies), options)
    }

    fn step_impl<P, G>(
        &mut self,
        params: &mut [&mut [P]],
        grads: &[Option<&[G]>],
        copies: Option<Vec<Option<ParamsCopy<'_>>>>,
        options: &StepOptions,
    ) -> Result<(), OptimizerError>
    where
        P: Storage<Compute = T::Compute>,
        G: Storage<Compute = T::Compute>,
    {
        let n = self.len();
        let mut copies = copies.unwrap_or_else(|| (0..n).map(|_| None).collect());
        for (what, actual) in [
            ("params", params.len()),
            ("grads", grads.len()),
            ("params_copies", copies.len()),
        ] {
            if actual != n {
                return Err(OptimizerError::TensorCount {
                    what,
                    expected: n,
                    actual,
                });
            }
        }
        coefficients::<T::Compute>(&self.groups)?;
        let prep =
            crate::prep_for::<T::Compute>(options).map_err(OptimizerError::InvalidOptions)?;
        // The coefficients of each tensor with a gradient: its group's, with the number of
        // this step (optax's bias correction reads it). All checked before anything is written.
        let mut coeffs = Vec::new();
        for (i, ((p, g), c)) in params.iter().zip(grads).zip(&copies).enumerate() {
            if let Some(g) = g {
                let c = c.as_ref().map_or(p.len(), ParamsCopy::len);
                for (buffer, len) in [
                    (Buffer::Params, p.len()),
                    (Buffer::Grads, g.len()),
                    (Buffer::ParamsCopy, c),
                ] {
                    if len != self.lens[i] {
                        return Err(OptimizerError::ShapeChanged {
                            tensor: i,
                            buffer,
                            expected: self.shapes[i].clone(),
                            actual: vec![len],
                        });
                    }
                }
                let group = self.group_of[i];
                let step = self.state[i].as_ref().map_or(0, |s| s.step) + 1;
                let hp = Hyperparameters {
                    step,
                    ..self.groups[group].hyperparameters
                };
                coeffs.push(
                    Coefficients::new(&hp)
                        .map_err(|error| OptimizerError::InvalidHyperparameter { group, error })?,
                );
            }
        }
        let any_copy = copies.iter().flatten().next().is_some();
        let compute = <T::Compute as Storage>::FORMAT;
        if any_copy && compute != Format::F32 {
            return Err(OptimizerError::InvalidOptions(Error::Unsupported {
                reason: "a 16-bit parameter copy needs f32, bf16 or f16 parameters, not f64",
            }));
        }
        // Everything is valid: from here on nothing can fail.
        let plain = P::FORMAT == compute
            && G::FORMAT == compute
            && T::FORMAT == compute
            && options.is_plain_gradient()
            && !any_copy;
        let mut plain_pieces = Vec::new();
        let mut mixed_pieces = Vec::new();
        for (i, (((p, g), state), copy)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.state.iter_mut())
            .zip(copies.iter_mut())
            .enumerate()
        {
            let Some(g) = g else { continue };
            let group = self.group_of[i];
            let hp = &self.groups[group].hyperparameters;
            let (centered, momentum) = hp.uses_state();
            let len = self.lens[i];
            let st = state.get_or_insert_with(|| TensorState {
                step: 0,
                square_avg: vec![
                    T::round(<T::Compute as Element>::from_f64(
                        hp.initial_square_avg()
                    ));
                    len
                ],
                grad_avg: None,
                momentum_buffer: None,
            });
            st.step += 1;
            // A group switched to centered/momentum after the state was created starts that
            // buffer at zero, as a fresh PyTorch state would have it (PyTorch itself raises a
            // KeyError there). `save_state` writes such a buffer as the zeros it would start
            // from, and `load_state` accepts its absence with the same meaning, so step, save
            // and load agree.
            let mut state = State::new(&mut st.square_avg[..]);
            if centered {
                state =
                    state.with_grad_avg(st.grad_avg.get_or_insert_with(|| vec![T::default(); len]));
            }
            if momentum {
                state = state.with_momentum_buffer(
                    st.momentum_buffer
                        .get_or_insert_with(|| vec![T::default(); len]),
                );
            }
            // piece k uses coeffs[k]: one per tensor with a gradient, in order
            let k = plain_pieces.len() + mixed_pieces.len();
            if plain {
                plain_pieces.push((k, crate::plain_buffers(&mut p[..], g, state)));
            } else {
                let mut prep = prep;
                if let Rounding::Stochastic { seed, .. } = options.rounding {
                    prep.rounding = Rounding::Stochastic {
                        seed: crate::many::tensor_seed(seed, i),
                        step: st.step,
                    };
                }
                let copy = copy.take();
                mixed_pieces.push((k, crate::mixed_buffers(&mut p[..], g, state, copy, prep)));
            }
        }
        if plain {
            crate::threading::run_many(&self.kernel, &coeffs, plain_pieces);
        } else {
            let sixteen =
                T::FORMAT.is_16_bit() || P::FORMAT.is_16_bit() || G::FORMAT.is_16_bit() || any_copy;
            crate::threading::run_many(&self.kernel.for_pass(sixteen), &coeffs, mixed_pieces);
        }
        Ok(())
    }
}

#[cfg(feature = "safetensors")]
mod state_file;
