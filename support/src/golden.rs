//! Golden-set reader and comparison rule, shared by `tests/golden.rs` and `examples/golden.rs`.
//!
//! Format (see `tests/golden/README.md`): a directory with `cases.json` (`tolerance.{f32,f64}`
//! and `cases`, each with `name`, `dtype`, `n`, `steps`, `lr` (one per step), `alpha`, `eps`,
//! `weight_decay`, `momentum`, `centered`, `maximize`, `files`) and raw little-endian arrays.

use crate::state::OwnedState;
use rmsprop_simd::{
    bf16, f16, Element, Format, GradSlice, Hyperparameters, Kernel, OptaxOptions, ParamsCopy,
    Semantics, StepOptions,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Element type of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

/// One case of a set, checked against the format when loaded.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub dtype: Dtype,
    pub n: usize,
    pub steps: usize,
    pub lr: Vec<f64>,
    pub hp: Hyperparameters,
    /// `(key, path)` for params0, grads, params, square_avg, the optional state arrays and
    /// params_copy.
    pub files: Vec<(String, PathBuf)>,
    pub tolerance: f64,
    /// Mixed-precision sets: the 16-bit format of `grads` (`grads_dtype`).
    pub grads_dtype: Option<Format>,
    /// Mixed-precision sets: one loss scale per step (`grad_scale`); a step whose unscaled
    /// gradients are not all finite is skipped.
    pub grad_scale: Option<Vec<f64>>,
    /// Mixed-precision sets: the format of `params_copy` (`params_copy_dtype`).
    pub params_copy_dtype: Option<Format>,
    /// Mixed-precision sets: the steps the generator skipped (`skipped_steps`), checked against
    /// the finite check's decisions when given.
    pub skipped_steps: Option<Vec<usize>>,
}

/// A loaded `cases.json`.
#[derive(Clone, Debug)]
pub struct GoldenSet {
    pub dir: PathBuf,
    pub cases: Vec<Case>,
}

/// The result for one expected array of one case.
#[derive(Clone, Debug)]
pub struct ArrayReport {
    pub array: String,
    /// `max|X - E| / max(max|E - R|, tiny)` over finite positions; `inf` when the NaN/±Inf
    /// positions differ.
    pub error: f64,
    pub pass: bool,
}

const STATE_ARRAYS: [&str; 3] = ["square_avg", "grad_avg", "momentum_buffer"];

fn field<'a>(obj: &'a Value, key: &str, ctx: &str) -> Result<&'a Value, String> {
    obj.get(key)
        .ok_or_else(|| format!("{ctx}: missing field `{key}`"))
}

fn number(obj: &Value, key: &str, ctx: &str) -> Result<f64, String> {
    field(obj, key, ctx)?
        .as_f64()
        .ok_or_else(|| format!("{ctx}: field `{key}` is not a number"))
}

fn count(obj: &Value, key: &str, ctx: &str) -> Result<usize, String> {
    field(obj, key, ctx)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| format!("{ctx}: field `{key}` is not a non-negative integer"))
}

fn flag(obj: &Value, key: &str, ctx: &str) -> Result<bool, String> {
    field(obj, key, ctx)?
        .as_bool()
        .ok_or_else(|| format!("{ctx}: field `{key}` is not a boolean"))
}

/// A number, or 0 for JSON `null` (optax's `momentum=None`, Keras's `weight_decay=None`).
fn number_or_none(obj: &Value, key: &str, ctx: &str) -> Result<f64, String> {
    match field(obj, key, ctx)? {
        Value::Null => Ok(0.0),
        v => v
            .as_f64()
            .ok_or_else(|| format!("{ctx}: field `{key}` is not a number or null")),
    }
}

/// The case's hyperparameters: PyTorch's fields, or, with `framework` (`optax ...`,
/// `keras ...`), the library's own argument names under `options`.
fn hyperparameters(c: &Value, ctx: &str) -> Result<Hyperparameters, String> {
    let framework = c
        .get("framework")
        .and_then(Value::as_str)
        .unwrap_or("torch");
    let name = framework.split_whitespace().next().unwrap_or("");
    let options = || {
        let o = field(c, "options", ctx)?;
        o.as_object()
            .ok_or_else(|| format!("{ctx}: `options` is not an object"))
            .map(|_| o)
    };
    let only = |o: &Value, known: &[&str]| -> Result<(), String> {
        match o
            .as_object()
            .and_then(|m| m.keys().find(|k| !known.contains(&k.as_str())))
        {
            Some(k) => Err(format!("{ctx}: unknown {name} option `{k}`")),
            None => Ok(()),
        }
    };
    match name {
        "torch" | "pytorch" => Ok(Hyperparameters {
            alpha: number(c, "alpha", ctx)?,
            eps: number(c, "eps", ctx)?,
            weight_decay: number(c, "weight_decay", ctx)?,
            momentum: number(c, "momentum", ctx)?,
            centered: flag(c, "centered", ctx)?,
            maximize: flag(c, "maximize", ctx)?,
            ..Default::default()
        }),
        "optax" => {
            let o = options()?;
            only(
                o,
                &[
                    "decay",
                    "eps",
                    "initial_scale",
                    "eps_in_sqrt",
                    "centered",
                    "momentum",
                    "nesterov",
                    "bias_correction",
                ],
            )?;
            Ok(Hyperparameters {
                alpha: number(o, "decay", ctx)?,
                eps: number(o, "eps", ctx)?,
                centered: flag(o, "centered", ctx)?,
                momentum: number_or_none(o, "momentum", ctx)?,
                semantics: Semantics::Optax(OptaxOptions {
                    initial_scale: number(o, "initial_scale", ctx)?,
                    eps_in_sqrt: flag(o, "eps_in_sqrt", ctx)?,
                    nesterov: flag(o, "nesterov", ctx)?,
                    bias_correction: flag(o, "bias_correction", ctx)?,
                }),
                ..Hyperparameters::optax(0.0)
            })
        }
        "keras" => {
            let o = options()?;
            only(
                o,
                &["rho", "momentum", "epsilon", "centered", "weight_decay"],
            )?;
            Ok(Hyperparameters {
                alpha: number(o, "rho", ctx)?,
                eps: number(o, "epsilon", ctx)?,
                centered: flag(o, "centered", ctx)?,
                momentum: number_or_none(o, "momentum", ctx)?,
                weight_decay: number_or_none(o, "weight_decay", ctx)?,
                ..Hyperparameters::keras()
            })
        }
        _ => Err(format!("{ctx}: unknown framework {framework:?}")),
    }
}

impl GoldenSet {
    /// Reads and checks `dir/cases.json` and the sizes of every file it names.
    pub fn load(dir: &Path) -> Result<GoldenSet, String> {
        let path = dir.join("cases.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let root: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
        let tolerance = field(&root, "tolerance", "cases.json")?;
        let tol_f32 = number(tolerance, "f32", "cases.json tolerance")?;
        let tol_f64 = number(tolerance, "f64", "cases.json tolerance")?;
        let list = field(&root, "cases", "cases.json")?
            .as_array()
            .ok_or("cases.json: `cases` is not an array")?;
        if list.is_empty() {
            return Err("cases.json: `cases` is empty".into());
        }
        let mut cases = Vec::with_capacity(list.len());
        for (index, c) in list.iter().enumerate() {
            let ctx = format!("cases.json case #{index}");
            let name = field(c, "name", &ctx)?
                .as_str()
                .ok_or_else(|| format!("{ctx}: `name` is not a string"))?
                .to_string();
            let ctx = format!("case {name}");
            let dtype = match field(c, "dtype", &ctx)?.as_str() {
                Some("f32") => Dtype::F32,
                Some("f64") => Dtype::F64,
                other => {
                    return Err(format!(
                        "{ctx}: dtype {other:?} is neither \"f32\" nor \"f64\""
                    ))
                }
            };
            let n = count(c, "n", &ctx)?;
            let steps = count(c, "steps", &ctx)?;
            let lr = field(c, "lr", &ctx)?
                .as_array()
                .ok_or_else(|| format!("{ctx}: `lr` is not an array"))?
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| format!("{ctx}: `lr` holds a non-number"))
                })
                .collect::<Result<Vec<f64>, String>>()?;
            if lr.len() != steps {
                return Err(format!(
                    "{ctx}: `lr` has {} values for {steps} steps",
                    lr.len()
                ));
            }
            let mut hp = hyperparameters(c, &ctx)?;
            hp.lr = lr.first().copied().unwrap_or(0.0);
            let format16 = |key: &str| -> Result<Option<Format>, String> {
                match c.get(key) {
                    None => Ok(None),
                    Some(v) => match v.as_str() {
                        Some("bf16") => Ok(Some(Format::Bf16)),
                        Some("f16") => Ok(Some(Format::F16)),
                        _ => Err(format!("{ctx}: `{key}` is neither \"bf16\" nor \"f16\"")),
                    },
                }
            };
            let grads_dtype = format16("grads_dtype")?;
            let params_copy_dtype = format16("params_copy_dtype")?;
            if (grads_dtype.is_some() || params_copy_dtype.is_some()) && dtype != Dtype::F32 {
                return Err(format!("{ctx}: 16-bit gradients or copies need dtype f32"));
            }
            let numbers = |key: &str| -> Result<Option<Vec<f64>>, String> {
                match c.get(key) {
                    None => Ok(None),
                    Some(v) => v
                        .as_array()
                        .ok_or_else(|| format!("{ctx}: `{key}` is not an array"))?
                        .iter()
                        .map(|x| {
                            x.as_f64()
                                .ok_or_else(|| format!("{ctx}: `{key}` holds a non-number"))
                        })
                        .collect::<Result<Vec<f64>, String>>()
                        .map(Some),
                }
            };
            let grad_scale = numbers("grad_scale")?;
            if grad_scale.as_ref().is_some_and(|g| g.len() != steps) {
                return Err(format!("{ctx}: `grad_scale` needs one value per step"));
            }
            let skipped_steps = numbers("skipped_steps")?
                .map(|v| v.into_iter().map(|x| x as usize).collect::<Vec<usize>>());
            let (centered, momentum) = hp.uses_state();
            let files_obj = field(c, "files", &ctx)?
                .as_object()
                .ok_or_else(|| format!("{ctx}: `files` is not an object"))?;
            let size = match dtype {
                Dtype::F32 => 4,
                Dtype::F64 => 8,
            };
            let mut files = Vec::new();
            for (key, needed, elements) in [
                ("params0", true, n),
                ("grads", true, steps * n),
                ("params", true, n),
                ("square_avg", true, n),
                ("grad_avg", centered, n),
                ("momentum_buffer", momentum, n),
                ("params_copy", params_copy_dtype.is_some(), n),
            ] {
                let size = match key {
                    "grads" if grads_dtype.is_some() => 2,
                    "params_copy" => 2,
                    _ => size,
                };
                match (needed, files_obj.get(key)) {
                    (true, None) => return Err(format!("{ctx}: `files` lacks `{key}`")),
                    (false, Some(_)) => {
                        return Err(format!(
                            "{ctx}: `files` has `{key}`, which its hyperparameters do not use"
                        ))
                    }
                    (false, None) => continue,
                    (true, Some(v)) => {
                        let file = v
                            .as_str()
                            .ok_or_else(|| format!("{ctx}: files.{key} is not a string"))?;
                        let path = dir.join(file);
                        let len = std::fs::metadata(&path)
                            .map_err(|e| format!("{ctx}: cannot read {}: {e}", path.display()))?
                            .len();
                        if len != (elements * size) as u64 {
                            return Err(format!(
                                "{ctx}: {} has {len} bytes, expected {} ({elements} x {size})",
                                path.display(),
                                elements * size
                            ));
                        }
                        files.push((key.to_string(), path));
                    }
                }
            }
            if let Some(unknown) = files_obj.keys().find(|k| {
                !["params0", "grads", "params", "params_copy"].contains(&k.as_str())
                    && !STATE_ARRAYS.contains(&k.as_str())
            }) {
                return Err(format!("{ctx}: `files` has unknown key `{unknown}`"));
            }
            let tolerance = match dtype {
                Dtype::F32 => tol_f32,
                Dtype::F64 => tol_f64,
            };
            cases.push(Case {
                name,
                dtype,
                n,
                steps,
                lr,
                hp,
                files,
                tolerance,
                grads_dtype,
                grad_scale,
                params_copy_dtype,
                skipped_steps,
            });
        }
        Ok(GoldenSet {
            dir: dir.to_path_buf(),
            cases,
        })
    }
}

impl Case {
    /// The file of array `key`, if the case has one.
    fn path(&self, key: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| p.as_path())
    }

    /// Array `key` in element type `T` (its presence and size were checked when loaded).
    fn load<T: Element>(&self, key: &str) -> Result<Vec<T>, String> {
        read_array::<T>(self.path(key).expect("checked when loaded"))
    }

    /// Compares the final parameters and state with the case's expected arrays by the rule of
    /// the README (`v0`: where `square_avg` started).
    fn compare<T: Element>(
        &self,
        params: &[T],
        params0: &[T],
        st: &OwnedState<T>,
        v0: &[T],
    ) -> Result<Vec<ArrayReport>, String> {
        let zeros = vec![T::default(); self.n];
        let tiny = match self.dtype {
            Dtype::F32 => f32::MIN_POSITIVE as f64,
            Dtype::F64 => f64::MIN_POSITIVE,
        };
        let mut reports = Vec::new();
        for (key, got, start) in [
            ("params", params, params0),
            ("square_avg", &st.square_avg[..], v0),
            ("grad_avg", &st.grad_avg[..], &zeros[..]),
            ("momentum_buffer", &st.momentum_buffer[..], &zeros[..]),
        ] {
            if self.path(key).is_none() {
                continue;
            }
            let expected = self.load::<T>(key)?;
            let error = relative_error(got, &expected, start, tiny);
            reports.push(ArrayReport {
                array: key.to_string(),
                error,
                pass: error <= self.tolerance,
            });
        }
        Ok(reports)
    }
}

fn read_array<T: Element>(path: &Path) -> Result<Vec<T>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let size = std::mem::size_of::<T>();
    Ok(bytes
        .chunks_exact(size)
        .map(|chunk| {
            let mut le = [0u8; 8];
            le[..size].copy_from_slice(chunk);
            if !cfg!(target_endian = "little") {
                le[..size].reverse();
            }
            bytemuck::pod_read_unaligned::<T>(&le[..size])
        })
        .collect())
}

/// The comparison rule of the golden README, computed in `f64`.
pub fn relative_error<T: Element>(x: &[T], expected: &[T], start: &[T], tiny: f64) -> f64 {
    let class = |v: f64| {
        if v.is_nan() {
            1
        } else if v == f64::INFINITY {
            2
        } else if v == f64::NEG_INFINITY {
            3
        } else {
            0
        }
    };
    let mut scale = 0.0f64;
    let mut worst = 0.0f64;
    for ((&x, &e), &r) in x.iter().zip(expected).zip(start) {
        let (x, e, r) = (x.to_f64(), e.to_f64(), r.to_f64());
        if class(x) != class(e) {
            return f64::INFINITY;
        }
        if e.is_finite() {
            scale = scale.max((e - r).abs());
            worst = worst.max((x - e).abs());
        }
    }
    worst / scale.max(tiny)
}

/// Runs `case` from its start with `kernel`, and compares every expected array.
pub fn run_case<T: Element>(case: &Case, kernel: &Kernel) -> Result<Vec<ArrayReport>, String> {
    let params0 = case.load::<T>("params0")?;
    let grads = case.load::<T>("grads")?;
    let n = case.n;
    let mut params = params0.clone();
    let mut st = OwnedState::<T>::zeros(n);
    let v0 = vec![T::from_f64(case.hp.initial_square_avg()); n];
    st.square_avg.copy_from_slice(&v0);
    for (s, &lr) in case.lr.iter().enumerate() {
        let hp = Hyperparameters {
            lr,
            step: s as u64 + 1,
            ..case.hp
        };
        let state = st.state(&hp);
        kernel
            .step(&hp, &mut params, &grads[s * n..(s + 1) * n], state)
            .map_err(|e| format!("step {s} refused: {e}"))?;
    }
    case.compare(&params, &params0, &st, &v0)
}

/// The 16-bit rule of the mixed README: NaN/Inf positions match, every other element within
/// one unit in the last place of the 16-bit type. Returns the worst distance in ulps (`inf` when
/// the special positions differ).
pub fn ulps16(got: &[u16], expected: &[u16], format: Format) -> f64 {
    let widen = |b: u16| match format {
        Format::Bf16 => bf16::from_bits(b).to_f64(),
        _ => f16::from_bits(b).to_f64(),
    };
    // sign-magnitude bits on a monotone integer line
    let line = |b: u16| {
        if b & 0x8000 != 0 {
            -((b & 0x7FFF) as i64)
        } else {
            b as i64
        }
    };
    let mut worst = 0i64;
    for (&g, &e) in got.iter().zip(expected) {
        let (x, y) = (widen(g), widen(e));
        if x.is_nan() || y.is_nan() || x.is_infinite() || y.is_infinite() {
            if !(x.is_nan() && y.is_nan() || x == y) {
                return f64::INFINITY;
            }
            continue;
        }
        worst = worst.max((line(g) - line(e)).abs());
    }
    worst as f64
}

/// Runs a mixed-precision case (f32 master parameters and state, 16-bit gradients, loss scales,
/// a 16-bit copy): each step checks the unscaled gradients with `Kernel::grads_are_finite`
/// and skips the step when one is not finite (as `GradScaler` does), else one fused
/// `Kernel::step_with` divides by the scale and writes the copy.
pub fn run_mixed_case(case: &Case, kernel: &Kernel) -> Result<Vec<ArrayReport>, String> {
    let load16 = |key: &str| -> Result<Vec<u16>, String> {
        let bytes = std::fs::read(case.path(key).expect("checked when loaded"))
            .map_err(|e| format!("cannot read {key}: {e}"))?;
        Ok(bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    };
    let n = case.n;
    let params0 = case.load::<f32>("params0")?;
    let grads_f32 = match case.grads_dtype {
        None => Some(case.load::<f32>("grads")?),
        Some(_) => None,
    };
    let grads16 = match case.grads_dtype {
        Some(_) => load16("grads")?,
        None => Vec::new(),
    };
    let mut params = params0.clone();
    let mut st = OwnedState::<f32>::zeros(n);
    let copy_format = case.params_copy_dtype;
    let mut copy_bf16: Vec<bf16> = params0.iter().map(|&x| bf16::from_f32(x)).collect();
    let mut copy_f16: Vec<f16> = params0.iter().map(|&x| f16::from_f32(x)).collect();
    let mut skipped = Vec::new();
    for (s, &lr) in case.lr.iter().enumerate() {
        let hp = Hyperparameters {
            lr,
            step: s as u64 + 1,
            ..case.hp
        };
        let scale = case.grad_scale.as_ref().map_or(1.0, |g| g[s]);
        let row = s * n..(s + 1) * n;
        let g16 = &grads16[if case.grads_dtype.is_some() {
            row.clone()
        } else {
            0..0
        }];
        let gb: &[bf16] = bytemuck::cast_slice(g16);
        let gh: &[f16] = bytemuck::cast_slice(g16);
        let slice: GradSlice<'_> = match (case.grads_dtype, &grads_f32) {
            (Some(Format::Bf16), _) => gb.into(),
            (Some(_), _) => gh.into(),
            (None, Some(g)) => (&g[row.clone()]).into(),
            (None, None) => unreachable!("f32 gradients are loaded when there is no grads_dtype"),
        };
        if case.grad_scale.is_some()
            && !kernel
                .grads_are_finite(&[slice], scale)
                .map_err(|e| format!("step {s}: {e}"))?
        {
            skipped.push(s);
            continue;
        }
        let opts = StepOptions {
            grad_scale: scale,
            ..StepOptions::default()
        };
        let state = st.state(&hp);
        let copy = match copy_format {
            Some(Format::Bf16) => Some(ParamsCopy::from(&mut copy_bf16[..])),
            Some(_) => Some(ParamsCopy::from(&mut copy_f16[..])),
            None => None,
        };
        let r = match slice {
            GradSlice::Bf16(g) => kernel.step_with(&hp, &opts, &mut params, g, state, copy),
            GradSlice::F16(g) => kernel.step_with(&hp, &opts, &mut params, g, state, copy),
            GradSlice::F32(g) => kernel.step_with(&hp, &opts, &mut params, g, state, copy),
            GradSlice::F64(_) => unreachable!("f32 cases only"),
        };
        r.map_err(|e| format!("step {s} refused: {e}"))?;
    }
    let mut reports = case.compare(&params, &params0, &st, &vec![0.0f32; n])?;
    if let Some(format) = copy_format {
        let got: Vec<u16> = match format {
            Format::Bf16 => copy_bf16.iter().map(|x| x.to_bits()).collect(),
            _ => copy_f16.iter().map(|x| x.to_bits()).collect(),
        };
        let ulps = ulps16(&got, &load16("params_copy")?, format);
        // Reported in units of the tolerance: one ulp of the 16-bit type is the limit.
        reports.push(ArrayReport {
            array: "params_copy".into(),
            error: ulps * case.tolerance,
            pass: ulps <= 1.0,
        });
    }
    if let Some(expected) = &case.skipped_steps {
        let same = *expected == skipped;
        reports.push(ArrayReport {
            array: format!("skipped_steps {skipped:?}"),
            error: if same { 0.0 } else { f64::INFINITY },
            pass: same,
        });
    }
    Ok(reports)
}

/// Runs a case with the element type its dtype names (mixed-precision cases through
/// [`run_mixed_case`]).
pub fn run_case_any(case: &Case, kernel: &Kernel) -> Result<Vec<ArrayReport>, String> {
    if case.grads_dtype.is_some() || case.grad_scale.is_some() || case.params_copy_dtype.is_some() {
        return run_mixed_case(case, kernel);
    }
    match case.dtype {
        Dtype::F32 => run_case::<f32>(case, kernel),
        Dtype::F64 => run_case::<f64>(case, kernel),
    }
}
