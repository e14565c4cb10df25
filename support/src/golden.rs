//! Golden-set reader and comparison rule, shared by `tests/golden.rs` and `examples/golden.rs`.
//!
//! Format (see `tests/golden/README.md`): a directory with `cases.json` (`tolerance.{f32,f64}`
//! and `cases`, each with `name`, `dtype`, `n`, `steps`, `lr` (one per step), `alpha`, `eps`,
//! `weight_decay`, `momentum`, `centered`, `maximize`, `files`) and raw little-endian arrays.

use crate::state::OwnedState;
use rmsprop_simd::{Element, Hyperparameters, Kernel, OptaxOptions, Semantics};
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
    /// `(key, path)` for params0, grads, params, square_avg and the optional state arrays.
    pub files: Vec<(String, PathBuf)>,
    pub tolerance: f64,
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
            ] {
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
                !["params0", "grads", "params"].contains(&k.as_str())
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
            });
        }
        Ok(GoldenSet {
            dir: dir.to_path_buf(),
            cases,
        })
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
    let path_of = |key: &str| {
        case.files
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, p)| p.as_path())
    };
    let load = |key: &str| read_array::<T>(path_of(key).expect("checked when loaded"));
    let params0 = load("params0")?;
    let grads = load("grads")?;
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
    let zeros = vec![T::default(); n];
    let tiny = match case.dtype {
        Dtype::F32 => f32::MIN_POSITIVE as f64,
        Dtype::F64 => f64::MIN_POSITIVE,
    };
    let mut reports = Vec::new();
    for (key, got, start) in [
        ("params", &params, &params0),
        ("square_avg", &st.square_avg, &v0),
        ("grad_avg", &st.grad_avg, &zeros),
        ("momentum_buffer", &st.momentum_buffer, &zeros),
    ] {
        if path_of(key).is_none() {
            continue;
        }
        let expected = load(key)?;
        let error = relative_error(got, &expected, start, tiny);
        reports.push(ArrayReport {
            array: key.to_string(),
            error,
            pass: error <= case.tolerance,
        });
    }
    Ok(reports)
}

/// Runs a case with the element type its dtype names.
pub fn run_case_any(case: &Case, kernel: &Kernel) -> Result<Vec<ArrayReport>, String> {
    match case.dtype {
        Dtype::F32 => run_case::<f32>(case, kernel),
        Dtype::F64 => run_case::<f64>(case, kernel),
    }
}
