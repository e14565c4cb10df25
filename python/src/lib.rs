//! `rmsprop_simd._native`: the fused RMSprop step on numpy arrays, in place, one call per
//! parameter group, with the GIL released during the step. The Python package re-exports
//! [`step`] and [`step_many`]; `rmsprop_simd.torch.RMSprop` calls [`step_many`] with numpy views
//! of its tensors.
//!
//! Every argument is checked before anything is written: dtype (float32 or float64, the same
//! for every array of a call), C-contiguity, writability, lengths, and aliasing (rust-numpy's
//! borrow checker refuses two writable views of overlapping memory). Bad input raises
//! `TypeError` (types, dtypes) or `ValueError` (everything else) with the crate's message.

use numpy::{
    Element as NpElement, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use rmsprop_simd::{
    bf16, f16, run_in_pool, Element, GradSlice, Hyperparameters, KerasOptions, Kernel, NormType,
    OptaxOptions, ParamsCopy, Rounding, Semantics, State, StepOptions, Storage, TensorStep,
    Threading,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Pools by thread count, shared by every call of this process; rebuilt after a fork (the
/// parent's threads do not exist in a child: Python's multiprocessing and DataLoader fork).
struct Pools {
    pid: u32,
    pools: HashMap<usize, Arc<rayon::ThreadPool>>,
}

static POOLS: Mutex<Option<Pools>> = Mutex::new(None);

fn pool(threads: usize) -> PyResult<Arc<rayon::ThreadPool>> {
    let mut guard = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    let pools = guard.get_or_insert_with(|| Pools {
        pid,
        pools: HashMap::new(),
    });
    if pools.pid != pid {
        // The parent's pools: leak them (dropping would signal threads that are gone).
        for (_, p) in pools.pools.drain() {
            core::mem::forget(p);
        }
        pools.pid = pid;
    }
    if let Some(p) = pools.pools.get(&threads) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("rmsprop-simd-{i}"))
        .build()
        .map_err(|e| {
            PyValueError::new_err(format!("cannot create a pool of {threads} threads: {e}"))
        })?;
    let p = Arc::new(p);
    pools.pools.insert(threads, p.clone());
    Ok(p)
}

fn threads_or_default(num_threads: Option<usize>) -> PyResult<usize> {
    match num_threads {
        Some(0) => Err(PyValueError::new_err("num_threads must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| {
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        })
}

/// The arrays of one tensor, borrowed (writable where written) for the duration of a step.
struct Borrowed<'py, T: NpElement> {
    params: PyReadwriteArrayDyn<'py, T>,
    grads: PyReadonlyArrayDyn<'py, T>,
    square_avg: PyReadwriteArrayDyn<'py, T>,
    grad_avg: Option<PyReadwriteArrayDyn<'py, T>>,
    momentum_buffer: Option<PyReadwriteArrayDyn<'py, T>>,
}

fn array<'py, T: NpElement>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let arr = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{name} must be a numpy array of {expected} (the dtype of params), got {}",
            dtype_name(obj)
        ))
    })?;
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{name} must be C-contiguous (use numpy.ascontiguousarray, then copy the result back)"
        )));
    }
    Ok(arr.clone())
}

fn writable<'py, T: NpElement>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadwriteArrayDyn<'py, T>> {
    array::<T>(obj, name, expected)?.try_readwrite().map_err(|e| {
        PyValueError::new_err(format!(
            "{name} cannot be written: {e} (read-only, or sharing memory with another buffer of this call)"
        ))
    })
}

fn readonly<'py, T: NpElement>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    array::<T>(obj, name, expected)?
        .try_readonly()
        .map_err(|e| {
            PyValueError::new_err(format!(
                "{name} cannot be read: {e} (it shares memory with a buffer this call writes)"
            ))
        })
}

/// The lists of a group: entry `i` of each list, `None` entries allowed where noted.
struct Lists<'py> {
    params: Vec<Bound<'py, PyAny>>,
    grads: Vec<Option<Bound<'py, PyAny>>>,
    square_avgs: Vec<Bound<'py, PyAny>>,
    grad_avgs: Option<Vec<Option<Bound<'py, PyAny>>>>,
    momentum_buffers: Option<Vec<Option<Bound<'py, PyAny>>>>,
}

fn list<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let l = obj
        .cast::<PyList>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a list of numpy arrays")))?;
    Ok(l.iter().collect())
}

fn optional_list<'py>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
    n: usize,
) -> PyResult<Option<Vec<Option<Bound<'py, PyAny>>>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let items = list(obj, name)?;
    if items.len() != n {
        return Err(PyValueError::new_err(format!(
            "{name} has {} entries, params has {n}",
            items.len()
        )));
    }
    Ok(Some(
        items
            .into_iter()
            .map(|x| (!x.is_none()).then_some(x))
            .collect(),
    ))
}

/// Borrows every array of every tensor that has a gradient (checking types, dtypes,
/// contiguity, writability and aliasing), then steps them all in one dispatch without the GIL.
fn run<'py, T: NpElement + Element>(
    py: Python<'py>,
    lists: &Lists<'py>,
    hp: &Hyperparameters,
    threads: usize,
    single: bool,
) -> PyResult<()> {
    let expected = if T::NAME == "f32" {
        "float32"
    } else {
        "float64"
    };
    let label = |what: &str, i: usize| {
        if single {
            what.to_string()
        } else {
            format!("{what}[{i}]")
        }
    };
    let (centered, momentum) = hp.uses_state();
    let mut borrowed: Vec<Borrowed<'py, T>> = Vec::with_capacity(lists.params.len());
    for i in 0..lists.params.len() {
        let Some(g) = &lists.grads[i] else {
            continue; // no gradient: the tensor is left untouched
        };
        let optional =
            |l: &Option<Vec<Option<Bound<'py, PyAny>>>>, name: &str, needed: bool, when: &str| {
                let entry = l.as_ref().and_then(|l| l[i].clone());
                match (needed, entry) {
                    (true, None) => Err(PyValueError::new_err(format!(
                        "{} is missing: it is required when {when}",
                        label(name, i)
                    ))),
                    (false, Some(_)) => Err(PyValueError::new_err(format!(
                        "{} is given, but it is used only when {when}",
                        label(name, i)
                    ))),
                    (_, entry) => Ok(entry),
                }
            };
        let ga = optional(&lists.grad_avgs, "grad_avg", centered, "centered=True")?;
        let b = optional(
            &lists.momentum_buffers,
            "momentum_buffer",
            momentum,
            "momentum > 0",
        )?;
        borrowed.push(Borrowed {
            params: writable::<T>(&lists.params[i], &label("params", i), expected)?,
            grads: readonly::<T>(g, &label("grads", i), expected)?,
            square_avg: writable::<T>(&lists.square_avgs[i], &label("square_avg", i), expected)?,
            grad_avg: ga
                .map(|a| writable::<T>(&a, &label("grad_avg", i), expected))
                .transpose()?,
            momentum_buffer: b
                .map(|a| writable::<T>(&a, &label("momentum_buffer", i), expected))
                .transpose()?,
        });
    }
    let mut steps = Vec::with_capacity(borrowed.len());
    let mut total = 0usize;
    for b in borrowed.iter_mut() {
        let contiguous = |_| PyValueError::new_err("arrays must be C-contiguous");
        let mut state = State::new(b.square_avg.as_slice_mut().map_err(contiguous)?);
        if let Some(ga) = b.grad_avg.as_mut() {
            state = state.with_grad_avg(ga.as_slice_mut().map_err(contiguous)?);
        }
        if let Some(m) = b.momentum_buffer.as_mut() {
            state = state.with_momentum_buffer(m.as_slice_mut().map_err(contiguous)?);
        }
        let params = b.params.as_slice_mut().map_err(contiguous)?;
        total += params.len();
        steps.push(TensorStep {
            hyperparameters: hp,
            params,
            grads: b.grads.as_slice().map_err(contiguous)?,
            state,
        });
    }
    let kernel = Kernel::new();
    let result = if threads <= 1 || total < kernel.parallel_min_len() {
        py.detach(|| kernel.with_threading(Threading::Serial).step_many(steps))
    } else {
        let pool = pool(threads)?;
        py.detach(|| run_in_pool(&pool, || kernel.step_many(steps)))
    };
    result.map_err(|e| {
        let message = if single {
            e.error.to_string()
        } else {
            format!("tensor {}: {}", e.tensor, e.error)
        };
        PyValueError::new_err(message)
    })
}

/// The semantics keyword arguments: `semantics` ("pytorch", "optax", "keras") and the options
/// of optax (`eps_in_sqrt`, `nesterov`, `bias_correction`, `step`) and Keras (`keras_lr_f32`).
#[derive(Clone, Copy)]
struct Framework<'a> {
    semantics: &'a str,
    eps_in_sqrt: bool,
    nesterov: bool,
    bias_correction: bool,
    step: u64,
    keras_lr_f32: bool,
}

impl Framework<'_> {
    fn semantics(&self) -> PyResult<Semantics> {
        Ok(match self.semantics {
            "pytorch" | "torch" => Semantics::PyTorch,
            "optax" => Semantics::Optax(OptaxOptions {
                initial_scale: 0.0,
                eps_in_sqrt: self.eps_in_sqrt,
                nesterov: self.nesterov,
                bias_correction: self.bias_correction,
            }),
            "keras" => Semantics::Keras(KerasOptions {
                lr_through_f32: self.keras_lr_f32,
            }),
            other => {
                return Err(PyValueError::new_err(format!(
                    "semantics must be \"pytorch\", \"optax\" or \"keras\", got {other:?}"
                )))
            }
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn dispatch<'py>(
    py: Python<'py>,
    lists: Lists<'py>,
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
    framework: Framework<'_>,
    num_threads: Option<usize>,
    single: bool,
) -> PyResult<()> {
    let n = lists.params.len();
    for (name, len) in [
        ("grads", lists.grads.len()),
        ("square_avgs", lists.square_avgs.len()),
    ] {
        if len != n {
            return Err(PyValueError::new_err(format!(
                "{name} has {len} entries, params has {n}"
            )));
        }
    }
    let hp = Hyperparameters {
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
        maximize,
        semantics: framework.semantics()?,
        step: framework.step,
    };
    let threads = threads_or_default(num_threads)?;
    let Some(first) = lists.params.first() else {
        return Ok(());
    };
    if first.cast::<PyArrayDyn<f32>>().is_ok() {
        run::<f32>(py, &lists, &hp, threads, single)
    } else if first.cast::<PyArrayDyn<f64>>().is_ok() {
        run::<f64>(py, &lists, &hp, threads, single)
    } else {
        Err(PyTypeError::new_err(format!(
            "{} must be a numpy array of float32 or float64, got {}",
            if single { "params" } else { "params[0]" },
            dtype_name(first)
        )))
    }
}

/// One RMSprop step on numpy arrays, in place: PyTorch's arithmetic, or optax's or Keras's with
/// `semantics="optax"` / `"keras"` (optax: eps_in_sqrt, nesterov, bias_correction with `step`,
/// the number of this step from 1; Keras: keras_lr_f32). Optax's state starts at its
/// initial_scale: fill square_avg with it before the first step.
///
/// params, square_avg (and grad_avg when centered, momentum_buffer when momentum > 0) are
/// updated; grads is only read. Every array: C-contiguous, the same dtype (float32 or float64)
/// and the same number of elements. num_threads: None for every core, 1 for the calling thread.
#[pyfunction]
#[pyo3(signature = (params, grads, square_avg, grad_avg=None, momentum_buffer=None, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=false, maximize=false, semantics="pytorch", eps_in_sqrt=true, nesterov=false, bias_correction=false, step=0, keras_lr_f32=true, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn step<'py>(
    py: Python<'py>,
    params: Bound<'py, PyAny>,
    grads: Bound<'py, PyAny>,
    square_avg: Bound<'py, PyAny>,
    grad_avg: Option<Bound<'py, PyAny>>,
    momentum_buffer: Option<Bound<'py, PyAny>>,
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
    semantics: &str,
    eps_in_sqrt: bool,
    nesterov: bool,
    bias_correction: bool,
    step: u64,
    keras_lr_f32: bool,
    num_threads: Option<usize>,
) -> PyResult<()> {
    let framework = Framework {
        semantics,
        eps_in_sqrt,
        nesterov,
        bias_correction,
        step,
        keras_lr_f32,
    };
    let one = |x: Option<Bound<'py, PyAny>>| Some(vec![x.filter(|x| !x.is_none())]);
    let lists = Lists {
        params: vec![params],
        grads: vec![Some(grads)],
        square_avgs: vec![square_avg],
        grad_avgs: one(grad_avg),
        momentum_buffers: one(momentum_buffer),
    };
    dispatch(
        py,
        lists,
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
        maximize,
        framework,
        num_threads,
        true,
    )
}

/// One RMSprop step over many tensors that share hyperparameters (a parameter group), in one
/// call: the work is balanced across threads (large tensors cut, small ones batched).
///
/// Lists of numpy arrays; a None gradient leaves its tensor untouched. grad_avgs /
/// momentum_buffers may be None when unused, and may hold None for tensors without a gradient.
#[pyfunction]
#[pyo3(signature = (params, grads, square_avgs, grad_avgs=None, momentum_buffers=None, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=false, maximize=false, semantics="pytorch", eps_in_sqrt=true, nesterov=false, bias_correction=false, step=0, keras_lr_f32=true, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn step_many<'py>(
    py: Python<'py>,
    params: Bound<'py, PyAny>,
    grads: Bound<'py, PyAny>,
    square_avgs: Bound<'py, PyAny>,
    grad_avgs: Option<Bound<'py, PyAny>>,
    momentum_buffers: Option<Bound<'py, PyAny>>,
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
    semantics: &str,
    eps_in_sqrt: bool,
    nesterov: bool,
    bias_correction: bool,
    step: u64,
    keras_lr_f32: bool,
    num_threads: Option<usize>,
) -> PyResult<()> {
    let framework = Framework {
        semantics,
        eps_in_sqrt,
        nesterov,
        bias_correction,
        step,
        keras_lr_f32,
    };
    let params = list(&params, "params")?;
    let n = params.len();
    let grads = list(&grads, "grads")?
        .into_iter()
        .map(|g| (!g.is_none()).then_some(g))
        .collect();
    let lists = Lists {
        params,
        grads,
        square_avgs: list(&square_avgs, "square_avgs")?,
        grad_avgs: optional_list(grad_avgs.as_ref(), "grad_avgs", n)?,
        momentum_buffers: optional_list(momentum_buffers.as_ref(), "momentum_buffers", n)?,
    };
    dispatch(
        py,
        lists,
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
        maximize,
        framework,
        num_threads,
        false,
    )
}

/// Checks hyperparameters as a step on `dtype` ("float32" or "float64") would, without
/// stepping anything: raises ValueError with the crate's message if they are invalid.
#[pyfunction]
#[pyo3(signature = (dtype, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0))]
fn check_hyperparameters(
    dtype: &str,
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
) -> PyResult<()> {
    let hp = Hyperparameters {
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        ..Default::default()
    };
    let result = match dtype {
        "float32" => rmsprop_simd::Coefficients::<f32>::new(&hp).map(|_| ()),
        "float64" => rmsprop_simd::Coefficients::<f64>::new(&hp).map(|_| ()),
        other => {
            return Err(PyTypeError::new_err(format!(
                "dtype must be \"float32\" or \"float64\", got {other:?}"
            )))
        }
    };
    result.map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The backend the step runs on (`avx512`, `avx2-fma`, `neon` or `scalar`).
#[pyfunction]
fn backend() -> String {
    Kernel::new().backend().to_string()
}

/// Steps of fewer elements (summed over a group) run on the calling thread.
#[pyfunction]
fn parallel_min_len() -> usize {
    Kernel::new().parallel_min_len()
}

// ---------------------------------------------------------------- 16-bit storage

/// A storage dtype of `step_mixed`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    Bf16,
    F16,
}

fn dtype_of(name: &str, what: &str) -> PyResult<Dtype> {
    match name {
        "float32" => Ok(Dtype::F32),
        "bfloat16" => Ok(Dtype::Bf16),
        "float16" => Ok(Dtype::F16),
        other => Err(PyTypeError::new_err(format!(
            "{what} must be \"float32\", \"bfloat16\" or \"float16\", got {other:?}"
        ))),
    }
}

/// A writable array of `step_mixed`: float32 values, or 16-bit float bits as uint16 / int16.
enum Rw<'py> {
    F32(PyReadwriteArrayDyn<'py, f32>),
    U16(PyReadwriteArrayDyn<'py, u16>),
    I16(PyReadwriteArrayDyn<'py, i16>),
}

/// A read-only array of `step_mixed`.
enum Ro<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    U16(PyReadonlyArrayDyn<'py, u16>),
    I16(PyReadonlyArrayDyn<'py, i16>),
}

const BITS: &str = "uint16 or int16 (the bits of a 16-bit float)";

fn rw<'py>(obj: &Bound<'py, PyAny>, name: &str, dtype: Dtype) -> PyResult<Rw<'py>> {
    Ok(match dtype {
        Dtype::F32 => Rw::F32(writable::<f32>(obj, name, "float32")?),
        _ if obj.cast::<PyArrayDyn<i16>>().is_ok() => Rw::I16(writable::<i16>(obj, name, BITS)?),
        _ => Rw::U16(writable::<u16>(obj, name, BITS)?),
    })
}

fn ro<'py>(obj: &Bound<'py, PyAny>, name: &str, dtype: Dtype) -> PyResult<Ro<'py>> {
    Ok(match dtype {
        Dtype::F32 => Ro::F32(readonly::<f32>(obj, name, "float32")?),
        _ if obj.cast::<PyArrayDyn<i16>>().is_ok() => Ro::I16(readonly::<i16>(obj, name, BITS)?),
        _ => Ro::U16(readonly::<u16>(obj, name, BITS)?),
    })
}

fn contiguous<E>(_: E) -> PyErr {
    PyValueError::new_err("arrays must be C-contiguous")
}

/// A storage type's slice of an array (checked against its dtype before).
trait FromArray: Storage<Compute = f32> + bytemuck::Pod {
    fn slice_mut<'a>(a: &'a mut Rw<'_>) -> PyResult<&'a mut [Self]> {
        match a {
            Rw::F32(a) => bytemuck::try_cast_slice_mut(a.as_slice_mut().map_err(contiguous)?),
            Rw::U16(a) => bytemuck::try_cast_slice_mut(a.as_slice_mut().map_err(contiguous)?),
            Rw::I16(a) => bytemuck::try_cast_slice_mut(a.as_slice_mut().map_err(contiguous)?),
        }
        .map_err(|_| PyTypeError::new_err("an array's dtype does not match its declared dtype"))
    }

    fn slice<'a>(a: &'a Ro<'_>) -> PyResult<&'a [Self]> {
        match a {
            Ro::F32(a) => bytemuck::try_cast_slice(a.as_slice().map_err(contiguous)?),
            Ro::U16(a) => bytemuck::try_cast_slice(a.as_slice().map_err(contiguous)?),
            Ro::I16(a) => bytemuck::try_cast_slice(a.as_slice().map_err(contiguous)?),
        }
        .map_err(|_| PyTypeError::new_err("an array's dtype does not match its declared dtype"))
    }
}

impl FromArray for f32 {}
impl FromArray for bf16 {}
impl FromArray for f16 {}

/// The borrowed arrays of one mixed step.
struct Mixed<'py> {
    params: Rw<'py>,
    grads: Ro<'py>,
    square_avg: Rw<'py>,
    grad_avg: Option<Rw<'py>>,
    momentum_buffer: Option<Rw<'py>>,
    copy: Option<(Rw<'py>, Dtype)>,
}

fn run_mixed<P: FromArray, G: FromArray, S: FromArray>(
    py: Python<'_>,
    m: &mut Mixed<'_>,
    hp: &Hyperparameters,
    options: &StepOptions,
    threads: usize,
) -> PyResult<()> {
    let params = P::slice_mut(&mut m.params)?;
    let grads = G::slice(&m.grads)?;
    let mut state = State::new(S::slice_mut(&mut m.square_avg)?);
    if let Some(a) = m.grad_avg.as_mut() {
        state = state.with_grad_avg(S::slice_mut(a)?);
    }
    if let Some(a) = m.momentum_buffer.as_mut() {
        state = state.with_momentum_buffer(S::slice_mut(a)?);
    }
    let copy = match m.copy.as_mut() {
        None => None,
        Some((a, Dtype::Bf16)) => Some(ParamsCopy::Bf16(bf16::slice_mut(a)?)),
        Some((a, _)) => Some(ParamsCopy::F16(f16::slice_mut(a)?)),
    };
    let kernel = Kernel::new();
    let len = params.len();
    let result = if threads <= 1 || len < kernel.parallel_min_len() {
        py.detach(|| {
            kernel
                .with_threading(Threading::Serial)
                .step_with(hp, options, params, grads, state, copy)
        })
    } else {
        let pool = pool(threads)?;
        py.detach(|| {
            run_in_pool(&pool, || {
                kernel
                    .with_threading(Threading::Parallel)
                    .step_with(hp, options, params, grads, state, copy)
            })
        })
    };
    result.map_err(|e| PyValueError::new_err(e.to_string()))
}

/// One RMSprop step (PyTorch's arithmetic) on arrays stored as float32, bfloat16 or float16,
/// computed in float32, in place: each stored value widened exactly, the float32 step, each
/// result rounded back to its storage (nearest-even, or stochastically with
/// `rounding="stochastic"`, keyed by `seed`, `step` and the element index).
///
/// 16-bit arrays hold the bits (numpy uint16 or int16: `tensor.view(torch.int16).numpy()`);
/// `params_dtype`, `grads_dtype` and `state_dtype` ("float32", "bfloat16", "float16") say what
/// they are, in any mix (f32 master weights with bfloat16 gradients, bfloat16 everything...).
/// `params_copy` (with `copy_dtype` "bfloat16" or "float16") receives the new params rounded to
/// nearest-even. Gradient pre-processing fused into the pass: divided by `grad_scale`, clamped
/// to `[-clip_value, clip_value]`, multiplied by `grad_multiplier`. Bad input raises and
/// writes nothing.
#[pyfunction]
#[pyo3(signature = (params, grads, square_avg, grad_avg=None, momentum_buffer=None, params_copy=None, *, params_dtype, grads_dtype, state_dtype, copy_dtype=None, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=false, maximize=false, grad_scale=1.0, clip_value=None, grad_multiplier=1.0, rounding="nearest", seed=0, step=0, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn step_mixed<'py>(
    py: Python<'py>,
    params: Bound<'py, PyAny>,
    grads: Bound<'py, PyAny>,
    square_avg: Bound<'py, PyAny>,
    grad_avg: Option<Bound<'py, PyAny>>,
    momentum_buffer: Option<Bound<'py, PyAny>>,
    params_copy: Option<Bound<'py, PyAny>>,
    params_dtype: &str,
    grads_dtype: &str,
    state_dtype: &str,
    copy_dtype: Option<&str>,
    lr: f64,
    alpha: f64,
    eps: f64,
    weight_decay: f64,
    momentum: f64,
    centered: bool,
    maximize: bool,
    grad_scale: f64,
    clip_value: Option<f64>,
    grad_multiplier: f64,
    rounding: &str,
    seed: u64,
    step: u64,
    num_threads: Option<usize>,
) -> PyResult<()> {
    let (pd, gd, sd) = (
        dtype_of(params_dtype, "params_dtype")?,
        dtype_of(grads_dtype, "grads_dtype")?,
        dtype_of(state_dtype, "state_dtype")?,
    );
    let rounding = match rounding {
        "nearest" => Rounding::NearestEven,
        "stochastic" => Rounding::Stochastic { seed, step },
        other => {
            return Err(PyValueError::new_err(format!(
                "rounding must be \"nearest\" or \"stochastic\", got {other:?}"
            )))
        }
    };
    let options = StepOptions {
        grad_scale,
        clip_value,
        grad_multiplier,
        rounding,
    };
    let hp = Hyperparameters {
        lr,
        alpha,
        eps,
        weight_decay,
        momentum,
        centered,
        maximize,
        ..Default::default()
    };
    let threads = threads_or_default(num_threads)?;
    let copy = match (params_copy.filter(|c| !c.is_none()), copy_dtype) {
        (None, None) => None,
        (Some(c), Some(d)) => {
            let d = dtype_of(d, "copy_dtype")?;
            if d == Dtype::F32 {
                return Err(PyTypeError::new_err(
                    "copy_dtype must be \"bfloat16\" or \"float16\"",
                ));
            }
            Some((rw(&c, "params_copy", d)?, d))
        }
        _ => {
            return Err(PyValueError::new_err(
                "params_copy and copy_dtype are given together or not at all",
            ))
        }
    };
    let optional = |a: Option<Bound<'py, PyAny>>, name: &str| {
        a.filter(|a| !a.is_none())
            .map(|a| rw(&a, name, sd))
            .transpose()
    };
    let mut m = Mixed {
        params: rw(&params, "params", pd)?,
        grads: ro(&grads, "grads", gd)?,
        square_avg: rw(&square_avg, "square_avg", sd)?,
        grad_avg: optional(grad_avg, "grad_avg")?,
        momentum_buffer: optional(momentum_buffer, "momentum_buffer")?,
        copy,
    };
    macro_rules! typed {
        ($p:ty, $g:ty, $s:ty) => {
            run_mixed::<$p, $g, $s>(py, &mut m, &hp, &options, threads)
        };
        ($p:ty, $g:ty) => {
            match sd {
                Dtype::F32 => typed!($p, $g, f32),
                Dtype::Bf16 => typed!($p, $g, bf16),
                Dtype::F16 => typed!($p, $g, f16),
            }
        };
        ($p:ty) => {
            match gd {
                Dtype::F32 => typed!($p, f32),
                Dtype::Bf16 => typed!($p, bf16),
                Dtype::F16 => typed!($p, f16),
            }
        };
    }
    match pd {
        Dtype::F32 => typed!(f32),
        Dtype::Bf16 => typed!(bf16),
        Dtype::F16 => typed!(f16),
    }
}

/// The total norm of many gradient arrays together (float32 or float64 numpy arrays, any mix):
/// `norm_type` 1, 2 or inf, as `torch.nn.utils.clip_grad_norm_` computes it, accumulated in
/// float64 over fixed blocks (the same result on any thread count).
#[pyfunction]
#[pyo3(signature = (grads, norm_type=2.0))]
fn grad_norm(py: Python<'_>, grads: Bound<'_, PyAny>, norm_type: f64) -> PyResult<f64> {
    let norm = if norm_type == 1.0 {
        NormType::L1
    } else if norm_type == 2.0 {
        NormType::L2
    } else if norm_type == f64::INFINITY {
        NormType::Inf
    } else {
        return Err(PyValueError::new_err(format!(
            "norm_type must be 1, 2 or inf, got {norm_type}"
        )));
    };
    enum Held<'py> {
        F32(PyReadonlyArrayDyn<'py, f32>),
        F64(PyReadonlyArrayDyn<'py, f64>),
    }
    let mut held = Vec::new();
    for (i, g) in list(&grads, "grads")?.iter().enumerate() {
        let name = format!("grads[{i}]");
        held.push(if g.cast::<PyArrayDyn<f64>>().is_ok() {
            Held::F64(readonly::<f64>(g, &name, "float64")?)
        } else {
            Held::F32(readonly::<f32>(g, &name, "float32 or float64")?)
        });
    }
    let slices = held
        .iter()
        .map(|h| {
            Ok(match h {
                Held::F32(a) => GradSlice::from(a.as_slice().map_err(contiguous)?),
                Held::F64(a) => GradSlice::from(a.as_slice().map_err(contiguous)?),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    py.detach(|| Kernel::new().grad_norm(&slices, norm))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// `clip_grad_norm_`'s coefficient in its float32 arithmetic: `max_norm / (total_norm + 1e-6)`,
/// clamped to at most 1 (pass it as `grad_multiplier` to fold the clip into the step).
#[pyfunction]
fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    rmsprop_simd::clip_coefficient(total_norm, max_norm)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(step, m)?)?;
    m.add_function(wrap_pyfunction!(step_many, m)?)?;
    m.add_function(wrap_pyfunction!(step_mixed, m)?)?;
    m.add_function(wrap_pyfunction!(grad_norm, m)?)?;
    m.add_function(wrap_pyfunction!(clip_coefficient, m)?)?;
    m.add_function(wrap_pyfunction!(backend, m)?)?;
    m.add_function(wrap_pyfunction!(check_hyperparameters, m)?)?;
    m.add_function(wrap_pyfunction!(parallel_min_len, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
