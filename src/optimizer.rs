//! The optimizer over a whole model: parameter groups, lazily allocated state, one balanced
//! parallel dispatch over every tensor, and PyTorch-compatible state in safetensors.

use crate::kernel::{Buffers, Pass};
use crate::{Coefficients, Element, Error, Hyperparameters, Kernel};
use std::fmt;

/// A set of tensors sharing hyperparameters (PyTorch's `param_groups` entry). `params` holds
/// tensor indices into the optimizer's list.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// The group's hyperparameters; change them between steps (schedulers).
    pub hyperparameters: Hyperparameters,
    /// Indices of the tensors in this group.
    pub params: Vec<usize>,
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
        /// `params`, `grads`, or a state name when loading.
        buffer: String,
        /// The shape recorded at construction.
        expected: Vec<usize>,
        /// What was given (for a slice: its length).
        actual: Vec<usize>,
    },
    /// The parameter groups do not assign every tensor to exactly one group.
    InvalidGroups(String),
    /// A state file or `param_groups` JSON cannot be used; says why.
    StateFile(String),
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
            OptimizerError::InvalidGroups(why) => write!(f, "invalid parameter groups: {why}"),
            OptimizerError::StateFile(why) => write!(f, "unusable optimizer state: {why}"),
        }
    }
}

impl std::error::Error for OptimizerError {}

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
///     ParamGroup { hyperparameters: Hyperparameters { momentum: 0.9, ..Default::default() }, params: vec![0] },
///     ParamGroup { hyperparameters: Hyperparameters::default(), params: vec![1] },
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

fn coefficients<T: Element>(groups: &[ParamGroup]) -> Result<Vec<Coefficients<T>>, OptimizerError> {
    groups
        .iter()
        .enumerate()
        .map(|(group, g)| {
            Coefficients::new(&g.hyperparameters)
                .map_err(|error| OptimizerError::InvalidHyperparameter { group, error })
        })
        .collect()
}

impl<T: Element> RmsProp<T> {
    /// One group holding every tensor.
    ///
    /// # Errors
    /// [`OptimizerError::InvalidHyperparameter`] if `hyperparameters` is invalid for `T`.
    pub fn new(
        shapes: Vec<Vec<usize>>,
        hyperparameters: Hyperparameters,
    ) -> Result<Self, OptimizerError> {
        let params = (0..shapes.len()).collect();
        Self::with_groups(
            shapes,
            vec![ParamGroup {
                hyperparameters,
                params,
            }],
        )
    }

    /// Parameter groups, each with its own hyperparameters; every tensor in exactly one group.
    ///
    /// # Errors
    /// [`OptimizerError::InvalidGroups`] or [`OptimizerError::InvalidHyperparameter`].
    pub fn with_groups(
        shapes: Vec<Vec<usize>>,
        groups: Vec<ParamGroup>,
    ) -> Result<Self, OptimizerError> {
        let group_of = check_groups(shapes.len(), &groups)?;
        coefficients::<T>(&groups)?;
        let lens = shapes.iter().map(|s| s.iter().product()).collect();
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
    /// # Errors
    /// [`OptimizerError::TensorCount`], [`OptimizerError::ShapeChanged`] or
    /// [`OptimizerError::InvalidHyperparameter`]; all checked before anything is written.
    pub fn step(
        &mut self,
        params: &mut [&mut [T]],
        grads: &[Option<&[T]>],
    ) -> Result<(), OptimizerError> {
        let n = self.len();
        for (what, actual) in [("params", params.len()), ("grads", grads.len())] {
            if actual != n {
                return Err(OptimizerError::TensorCount {
                    what,
                    expected: n,
                    actual,
                });
            }
        }
        let coeffs = coefficients::<T>(&self.groups)?;
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            if let Some(g) = g {
                for (buffer, len) in [("params", p.len()), ("grads", g.len())] {
                    if len != self.lens[i] {
                        return Err(OptimizerError::ShapeChanged {
                            tensor: i,
                            buffer: buffer.to_string(),
                            expected: self.shapes[i].clone(),
                            actual: vec![len],
                        });
                    }
                }
            }
        }
        // Everything is valid: from here on nothing can fail.
        let mut pieces = Vec::new();
        for (i, ((p, g), state)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.state.iter_mut())
            .enumerate()
        {
            let Some(g) = g else { continue };
            let group = self.group_of[i];
            let (centered, momentum) = self.groups[group].hyperparameters.uses_state();
            let len = self.lens[i];
            let st = state.get_or_insert_with(|| TensorState {
                step: 0,
                square_avg: vec![T::default(); len],
                grad_avg: None,
                momentum_buffer: None,
            });
            st.step += 1;
            // A group switched to centered/momentum after the state was created starts that
            // buffer at zero, as a fresh PyTorch state would have it.
            let grad_avg: &mut [T] = if centered {
                st.grad_avg.get_or_insert_with(|| vec![T::default(); len])
            } else {
                &mut []
            };
            let momentum_buffer: &mut [T] = if momentum {
                st.momentum_buffer
                    .get_or_insert_with(|| vec![T::default(); len])
            } else {
                &mut []
            };
            let bufs = Buffers {
                params: &mut p[..],
                grads: g,
                square_avg: &mut st.square_avg,
                grad_avg,
                momentum_buffer,
            };
            pieces.push((group, bufs));
        }
        run_pieces(&self.kernel, &coeffs, pieces);
        Ok(())
    }
}

/// Runs every piece, serially or as balanced parallel tasks.
fn run_pieces<T: Element>(
    kernel: &Kernel,
    coeffs: &[Coefficients<T>],
    pieces: Vec<(usize, Buffers<'_, T>)>,
) {
    let backend = kernel.backend();
    #[cfg(feature = "rayon")]
    {
        let total: usize = pieces.iter().map(|(_, b)| b.len()).sum();
        let threads = rayon::current_num_threads();
        let min_len = kernel.parallel_min_len();
        if kernel.threading() == crate::Threading::Parallel && total >= min_len && threads > 1 {
            use rayon::prelude::*;
            // Tasks of about `chunk` elements: large tensors cut (at multiples of CHUNK_ALIGN from
            // their start), small ones batched. Several tasks per thread for work stealing.
            use crate::CHUNK_ALIGN;
            let chunk = (total / (threads * 16))
                .max(min_len / 2)
                .next_multiple_of(CHUNK_ALIGN);
            let mut tasks: Vec<Vec<(usize, Buffers<'_, T>)>> = Vec::new();
            let mut current = Vec::new();
            let mut current_len = 0;
            for (group, mut bufs) in pieces {
                loop {
                    let room = chunk - current_len;
                    if bufs.len() <= room {
                        current_len += bufs.len();
                        current.push((group, bufs));
                        break;
                    }
                    let cut = room / CHUNK_ALIGN * CHUNK_ALIGN;
                    if cut > 0 {
                        let (head, tail) = bufs.split_at(cut);
                        current.push((group, head));
                        bufs = tail;
                    }
                    tasks.push(core::mem::take(&mut current));
                    current_len = 0;
                }
            }
            if !current.is_empty() {
                tasks.push(current);
            }
            tasks.into_par_iter().for_each(|task| {
                for (group, bufs) in task {
                    backend.vectorize(Pass {
                        k: coeffs[group],
                        bufs,
                    });
                }
            });
            return;
        }
    }
    for (group, bufs) in pieces {
        backend.vectorize(Pass {
            k: coeffs[group],
            bufs,
        });
    }
}

/// Complex tensors, stepped as PyTorch does (`view_as_real`: real and imaginary parts are
/// independent elements), through zero-copy casts.
#[cfg(feature = "num-complex")]
pub mod complex {
    use crate::Element;
    use num_complex::Complex;

    /// `[re0, im0, re1, im1, ...]` over the same memory (no copy): give the optimizer this view,
    /// with the tensor registered as twice as many real elements (shape `[.., 2]`, as
    /// `torch.view_as_real`).
    ///
    /// ```
    /// use num_complex::Complex;
    /// let z = [Complex::new(1.0f32, 2.0), Complex::new(3.0, 4.0)];
    /// assert_eq!(rmsprop_simd::complex::view_as_real(&z), &[1.0, 2.0, 3.0, 4.0]);
    /// ```
    pub fn view_as_real<T: Element>(values: &[Complex<T>]) -> &[T] {
        bytemuck::cast_slice(values)
    }

    /// Mutable [`view_as_real`].
    pub fn view_as_real_mut<T: Element>(values: &mut [Complex<T>]) -> &mut [T] {
        bytemuck::cast_slice_mut(values)
    }
}

#[cfg(feature = "safetensors")]
mod state_file;
