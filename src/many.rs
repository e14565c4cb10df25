//! One step over many tensors whose storage types are known only at run time
//! ([`Kernel::step_many_with`]): a whole mixed-precision model (f32 master weights with bf16
//! gradients and a bf16 copy, bf16 parameters with f32 state, f64 tensors beside them) in one
//! balanced dispatch, as a framework with run-time dtypes (or the C ABI) hands it over.

use crate::grads::GradSlice;
use crate::kernel::Buffers;
use crate::mixed::{Dst, MixedBuffers, Src};
use crate::storage::{bf16, f16, Format, ParamsCopy, Rounding, StepOptions, Storage};
use crate::{threading, Coefficients, Error, Hyperparameters, Kernel, StepManyError};

/// A buffer of any storage type that a step writes (parameters or state), the mutable
/// counterpart of [`GradSlice`]: from `&mut [f32]`, `&mut [f64]`, `&mut [bf16]`, `&mut [f16]`
/// with `.into()`.
#[derive(Debug)]
pub enum SliceMut<'a> {
    /// `f32` storage.
    F32(&'a mut [f32]),
    /// `f64` storage.
    F64(&'a mut [f64]),
    /// bf16 storage.
    Bf16(&'a mut [bf16]),
    /// f16 storage.
    F16(&'a mut [f16]),
}

impl<'a, T: Storage> From<&'a mut [T]> for SliceMut<'a> {
    fn from(s: &'a mut [T]) -> Self {
        match T::FORMAT {
            Format::F32 => SliceMut::F32(bytemuck::cast_slice_mut(s)),
            Format::F64 => SliceMut::F64(bytemuck::cast_slice_mut(s)),
            Format::Bf16 => SliceMut::Bf16(bytemuck::cast_slice_mut(s)),
            Format::F16 => SliceMut::F16(bytemuck::cast_slice_mut(s)),
        }
    }
}

impl<'a, T: Storage> From<&'a mut Vec<T>> for SliceMut<'a> {
    fn from(s: &'a mut Vec<T>) -> Self {
        SliceMut::from(&mut s[..])
    }
}

impl SliceMut<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            SliceMut::F32(s) => s.len(),
            SliceMut::F64(s) => s.len(),
            SliceMut::Bf16(s) => s.len(),
            SliceMut::F16(s) => s.len(),
        }
    }

    /// `true` when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The storage format.
    pub fn format(&self) -> Format {
        match self {
            SliceMut::F32(_) => Format::F32,
            SliceMut::F64(_) => Format::F64,
            SliceMut::Bf16(_) => Format::Bf16,
            SliceMut::F16(_) => Format::F16,
        }
    }
}

/// One tensor of [`Kernel::step_many_with`]: its hyperparameters, its buffers in any storage
/// types the single-tensor [`Kernel::step_with`] takes (parameters, gradients and state each in
/// `f32`, bf16 or f16, computed in `f32`; or every buffer `f64`), and an optional 16-bit copy of
/// the new parameters.
#[derive(Debug)]
pub struct TensorStepWith<'a> {
    /// The tensor's index in the model: it keys the tensor's stochastic-rounding stream and
    /// names the tensor in errors. Give each tensor its own (its position in the model's list
    /// of tensors, as [`crate::RmsProp`] does), and keep it from step to step.
    pub index: usize,
    /// The hyperparameters of this tensor's group.
    pub hyperparameters: &'a Hyperparameters,
    /// The parameters, updated in place.
    pub params: SliceMut<'a>,
    /// The gradients.
    pub grads: GradSlice<'a>,
    /// `square_avg`, updated in place (always used).
    pub square_avg: SliceMut<'a>,
    /// `grad_avg` (`centered` only), in the storage type of `square_avg`.
    pub grad_avg: Option<SliceMut<'a>>,
    /// `momentum_buffer` (`momentum > 0` only), in the storage type of `square_avg`.
    pub momentum_buffer: Option<SliceMut<'a>>,
    /// A 16-bit copy of the new parameters, written in the same pass (not for `f64`).
    pub params_copy: Option<ParamsCopy<'a>>,
}

/// A checked tensor, ready to run.
enum Checked<'a> {
    F32(Coefficients<f32>, MixedBuffers<'a, f32>),
    F64(Coefficients<f64>, MixedBuffers<'a, f64>),
}

const MIXED_COMPUTE: &str = "a tensor computes in f32 (its buffers f32, bf16 or f16) or in f64 \
                             (every buffer f64), not both";
const STATE_FORMATS: &str = "square_avg, grad_avg and momentum_buffer share one storage type";

fn dst<T: Storage>(s: SliceMut<'_>) -> Dst<'_, T> {
    match s {
        SliceMut::F32(s) => Dst::Native(bytemuck::cast_slice_mut(s)),
        SliceMut::F64(s) => Dst::Native(bytemuck::cast_slice_mut(s)),
        SliceMut::Bf16(s) => Dst::Bf16(bytemuck::cast_slice_mut(s)),
        SliceMut::F16(s) => Dst::F16(bytemuck::cast_slice_mut(s)),
    }
}

fn src<T: Storage>(s: GradSlice<'_>) -> Src<'_, T> {
    match s {
        GradSlice::F32(s) => Src::Native(bytemuck::cast_slice(s)),
        GradSlice::F64(s) => Src::Native(bytemuck::cast_slice(s)),
        GradSlice::Bf16(s) => Src::Bf16(bytemuck::cast_slice(s)),
        GradSlice::F16(s) => Src::F16(bytemuck::cast_slice(s)),
    }
}

impl<'a> TensorStepWith<'a> {
    /// Every check of [`Kernel::step_with`] for this tensor; nothing is written.
    fn check(self, options: &StepOptions) -> Result<Checked<'a>, Error> {
        let state = [
            Some(&self.square_avg),
            self.grad_avg.as_ref(),
            self.momentum_buffer.as_ref(),
        ];
        let s = self.square_avg.format();
        if state.iter().flatten().any(|b| b.format() != s) {
            return Err(Error::Unsupported {
                reason: STATE_FORMATS,
            });
        }
        let f64s = [self.params.format(), self.grads.format(), s]
            .iter()
            .filter(|&&f| f == Format::F64)
            .count();
        let lens = crate::Lens {
            params: self.params.len(),
            grads: self.grads.len(),
            square_avg: self.square_avg.len(),
            grad_avg: self.grad_avg.as_ref().map(SliceMut::len),
            momentum_buffer: self.momentum_buffer.as_ref().map(SliceMut::len),
        };
        match f64s {
            0 => {
                let (k, mut prep) = crate::validate_lens_with::<f32>(
                    self.hyperparameters,
                    options,
                    &lens,
                    self.params_copy.as_ref(),
                )?;
                if let Rounding::Stochastic { seed, step } = options.rounding {
                    prep.rounding = Rounding::Stochastic {
                        seed: tensor_seed(seed, self.index),
                        step,
                    };
                }
                Ok(Checked::F32(k, self.into_buffers(prep)))
            }
            3 => {
                let (k, prep) = crate::validate_lens_with::<f64>(
                    self.hyperparameters,
                    options,
                    &lens,
                    self.params_copy.as_ref(),
                )?;
                Ok(Checked::F64(k, self.into_buffers(prep)))
            }
            _ => Err(Error::Unsupported {
                reason: MIXED_COMPUTE,
            }),
        }
    }

    fn into_buffers<T: Storage>(self, prep: crate::mixed::Prep<T>) -> MixedBuffers<'a, T> {
        MixedBuffers {
            params: dst(self.params),
            grads: src(self.grads),
            square_avg: dst(self.square_avg),
            grad_avg: self.grad_avg.map(dst),
            momentum_buffer: self.momentum_buffer.map(dst),
            copy: self.params_copy.map(Dst::copy),
            prep,
            offset: 0,
        }
    }
}

/// The stochastic-rounding seed of tensor `index` of a multi-tensor step: the seed mixed with
/// the index, so no two tensors share random bits (as [`crate::RmsProp::step_with`] does).
pub(crate) const fn tensor_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A buffer stored in the compute type (checked by the caller); `None`: not used.
fn native<T>(d: Option<Dst<'_, T>>) -> &mut [T] {
    match d {
        Some(Dst::Native(s)) => s,
        _ => &mut [],
    }
}

/// The mixed pieces of one compute type, or the plain ones when every buffer is stored in it,
/// no copy is written and the options leave the gradient as it is.
fn run_group<T: Storage<Compute = T> + crate::Element>(
    kernel: &Kernel,
    options: &StepOptions,
    coeffs: &[Coefficients<T>],
    pieces: Vec<(usize, MixedBuffers<'_, T>)>,
) {
    let all_native = |b: &MixedBuffers<'_, T>| {
        b.copy.is_none()
            && [
                Some(&b.params),
                Some(&b.square_avg),
                b.grad_avg.as_ref(),
                b.momentum_buffer.as_ref(),
            ]
            .iter()
            .flatten()
            .all(|d| matches!(d, Dst::Native(_)))
            && matches!(b.grads, Src::Native(_))
    };
    if options.is_plain_gradient() && pieces.iter().all(|(_, b)| all_native(b)) {
        let plain = pieces
            .into_iter()
            .map(|(k, b)| {
                let grads = match b.grads {
                    Src::Native(s) => s,
                    _ => &[][..],
                };
                (
                    k,
                    Buffers {
                        params: native(Some(b.params)),
                        grads,
                        square_avg: native(Some(b.square_avg)),
                        grad_avg: native(b.grad_avg),
                        momentum_buffer: native(b.momentum_buffer),
                    },
                )
            })
            .collect();
        threading::run_many(kernel, coeffs, plain);
    } else {
        // 16-bit storage or a copy anywhere: the pass for 16-bit storage (as `step_with` picks).
        let sixteen = pieces.iter().any(|(_, b)| !all_native(b));
        threading::run_many(&kernel.for_pass(sixteen), coeffs, pieces);
    }
}

impl Kernel {
    /// One step over many tensors of any storage types ([`TensorStepWith`]), with gradient
    /// pre-processing and rounding ([`StepOptions`]), as one balanced dispatch: what
    /// [`Kernel::step_many`] does for tensors of one type, for a whole mixed-precision model.
    /// Each tensor's result equals [`Kernel::step_with`] on it alone, bit for bit, where under
    /// [`Rounding::Stochastic`] `{ seed, step }` the tensor with [`TensorStepWith::index`] `i`
    /// draws with the seed `seed ^ (i * 0x9E3779B97F4A7C15)` (wrapping) and the same `step`, so
    /// no two tensors share a stream.
    ///
    /// ```
    /// use rmsprop_simd::{bf16, Hyperparameters, Kernel, ParamsCopy, Rounding, StepOptions,
    ///                    TensorStepWith};
    /// let hp = Hyperparameters::default();
    /// // f32 master weights with bf16 gradients and a bf16 copy, beside an all-bf16 tensor
    /// let (mut w, gw, mut vw) = (vec![1.0f32; 300], vec![bf16::from_f32(0.1); 300], vec![0.0f32; 300]);
    /// let mut w16 = vec![bf16::ZERO; 300];
    /// let (mut b, gb, mut vb) = (vec![bf16::ONE; 3], vec![bf16::from_f32(0.2); 3], vec![bf16::ZERO; 3]);
    /// let options = StepOptions { grad_scale: 1024.0, ..Default::default() };
    /// Kernel::new().step_many_with(&options, vec![
    ///     TensorStepWith {
    ///         index: 0, hyperparameters: &hp, params: (&mut w).into(), grads: (&gw).into(),
    ///         square_avg: (&mut vw).into(), grad_avg: None, momentum_buffer: None,
    ///         params_copy: Some(ParamsCopy::from(&mut w16[..])),
    ///     },
    ///     TensorStepWith {
    ///         index: 1, hyperparameters: &hp, params: (&mut b).into(), grads: (&gb).into(),
    ///         square_avg: (&mut vb).into(), grad_avg: None, momentum_buffer: None,
    ///         params_copy: None,
    ///     },
    /// ])?;
    /// assert_eq!(w16[0], bf16::from_f32(w[0]));
    /// # Ok::<(), rmsprop_simd::StepManyError>(())
    /// ```
    ///
    /// # Errors
    /// The first tensor (in the order given, named by its `index`) whose step
    /// [`Kernel::step_with`] would refuse, with its error (invalid
    /// options are each tensor's error, so the first tensor's), and [`Error::Unsupported`] for
    /// state buffers of different storage types or a tensor that mixes `f64` with other types.
    /// Every tensor is checked before any is written, so on error every buffer is unchanged.
    pub fn step_many_with(
        &self,
        options: &StepOptions,
        steps: Vec<TensorStepWith<'_>>,
    ) -> Result<(), StepManyError> {
        let (mut k32, mut p32, mut k64, mut p64) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for s in steps {
            let tensor = s.index;
            match s
                .check(options)
                .map_err(|error| StepManyError { tensor, error })?
            {
                Checked::F32(k, b) => {
                    p32.push((k32.len(), b));
                    k32.push(k);
                }
                Checked::F64(k, b) => {
                    p64.push((k64.len(), b));
                    k64.push(k);
                }
            }
        }
        // Everything is valid: from here on nothing can fail.
        if !p32.is_empty() {
            run_group(self, options, &k32, p32);
        }
        if !p64.is_empty() {
            run_group(self, options, &k64, p64);
        }
        Ok(())
    }
}
