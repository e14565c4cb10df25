//! Saving and loading the optimizer state as safetensors, under PyTorch's `state_dict` names.
//!
//! Tensors: `state.{i}.square_avg`, `state.{i}.grad_avg`, `state.{i}.momentum_buffer` (the
//! tensor's shape, the element type's dtype) and `state.{i}.step` (0-d `F32`, as PyTorch keeps
//! it). The parameter groups are PyTorch's `state_dict()['param_groups']` as JSON: a list of
//! `{"lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize", "params"}` objects,
//! stored in the file's metadata under `param_groups` (or given beside the file).

use super::{check_groups, coefficients, OptimizerError, ParamGroup, RmsProp, TensorState};
use crate::{Element, Hyperparameters};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};
use std::collections::HashMap;

fn bad(why: impl Into<String>) -> OptimizerError {
    OptimizerError::StateFile(why.into())
}

fn dtype_of<T: Element>() -> Dtype {
    if T::NAME == "f32" {
        Dtype::F32
    } else {
        Dtype::F64
    }
}

fn encode<T: Element>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(core::mem::size_of_val(values));
    for v in values {
        let bytes = bytemuck::bytes_of(v);
        if cfg!(target_endian = "little") {
            out.extend_from_slice(bytes);
        } else {
            out.extend(bytes.iter().rev());
        }
    }
    out
}

fn decode<T: Element>(bytes: &[u8]) -> Vec<T> {
    let size = core::mem::size_of::<T>();
    bytes
        .chunks_exact(size)
        .map(|chunk| {
            let mut le = [0u8; 8];
            le[..size].copy_from_slice(chunk);
            if !cfg!(target_endian = "little") {
                le[..size].reverse();
            }
            bytemuck::pod_read_unaligned(&le[..size])
        })
        .collect()
}

/// The keys PyTorch writes in an RMSprop param group that do not change CPU results.
const IGNORED_GROUP_KEYS: [&str; 3] = ["foreach", "capturable", "differentiable"];

/// Parses PyTorch's `param_groups` JSON: a list, or an object with a `param_groups` list.
pub(super) fn parse_param_groups(json: &str) -> Result<Vec<ParamGroup>, OptimizerError> {
    let value: Value = serde_json::from_str(json)
        .map_err(|e| bad(format!("param_groups is not valid JSON: {e}")))?;
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(o) => o
            .get("param_groups")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("param_groups JSON object has no `param_groups` list"))?,
        _ => return Err(bad("param_groups JSON is neither a list nor an object")),
    };
    list.iter()
        .enumerate()
        .map(|(g, group)| {
            let o = group
                .as_object()
                .ok_or_else(|| bad(format!("param_groups[{g}] is not an object")))?;
            for key in o.keys() {
                let known = [
                    "lr",
                    "alpha",
                    "eps",
                    "weight_decay",
                    "momentum",
                    "centered",
                    "maximize",
                    "params",
                ];
                if !known.contains(&key.as_str()) && !IGNORED_GROUP_KEYS.contains(&key.as_str()) {
                    return Err(bad(format!("param_groups[{g}] has unknown key `{key}`")));
                }
            }
            let number = |k: &str| {
                o.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| bad(format!("param_groups[{g}].{k} is missing or not a number")))
            };
            let flag = |k: &str| {
                o.get(k).and_then(Value::as_bool).ok_or_else(|| {
                    bad(format!("param_groups[{g}].{k} is missing or not a boolean"))
                })
            };
            let params = o
                .get("params")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("param_groups[{g}].params is missing or not a list")))?
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|i| i as usize)
                        .ok_or_else(|| bad(format!("param_groups[{g}].params holds a non-index")))
                })
                .collect::<Result<Vec<usize>, _>>()?;
            Ok(ParamGroup {
                hyperparameters: Hyperparameters {
                    lr: number("lr")?,
                    alpha: number("alpha")?,
                    eps: number("eps")?,
                    weight_decay: number("weight_decay")?,
                    momentum: number("momentum")?,
                    centered: flag("centered")?,
                    maximize: flag("maximize")?,
                },
                params,
            })
        })
        .collect()
}

impl<T: Element> RmsProp<T> {
    /// PyTorch's `state_dict()['param_groups']` as a JSON list.
    ///
    /// ```
    /// use rmsprop_simd::{Hyperparameters, RmsProp};
    /// let opt = RmsProp::<f32>::new(vec![vec![2, 2]], Hyperparameters::default()).unwrap();
    /// assert!(opt.param_groups_json().contains("\"alpha\":0.99"));
    /// ```
    pub fn param_groups_json(&self) -> String {
        let list: Vec<Value> = self
            .groups
            .iter()
            .map(|g| {
                let h = &g.hyperparameters;
                json!({
                    "lr": h.lr, "alpha": h.alpha, "eps": h.eps, "weight_decay": h.weight_decay,
                    "momentum": h.momentum, "centered": h.centered, "maximize": h.maximize,
                    "params": g.params,
                })
            })
            .collect();
        Value::Array(list).to_string()
    }

    /// The state as a safetensors file (PyTorch's names; `param_groups` JSON in the metadata,
    /// with `format: pt` and `optimizer: RMSprop`).
    ///
    /// # Errors
    /// [`OptimizerError::StateFile`] if safetensors refuses to serialise (not expected).
    pub fn save_state(&self) -> Result<Vec<u8>, OptimizerError> {
        let mut owned: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = Vec::new();
        for (i, state) in self.state.iter().enumerate() {
            let Some(s) = state else { continue };
            let shape = &self.shapes[i];
            owned.push((
                format!("state.{i}.square_avg"),
                shape.clone(),
                encode(&s.square_avg),
                dtype_of::<T>(),
            ));
            if let Some(b) = &s.grad_avg {
                owned.push((
                    format!("state.{i}.grad_avg"),
                    shape.clone(),
                    encode(b),
                    dtype_of::<T>(),
                ));
            }
            if let Some(b) = &s.momentum_buffer {
                owned.push((
                    format!("state.{i}.momentum_buffer"),
                    shape.clone(),
                    encode(b),
                    dtype_of::<T>(),
                ));
            }
            owned.push((
                format!("state.{i}.step"),
                vec![],
                encode(&[s.step as f32]),
                Dtype::F32,
            ));
        }
        let views = owned
            .iter()
            .map(|(name, shape, data, dtype)| {
                TensorView::new(*dtype, shape.clone(), data).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("cannot build tensor views: {e}")))?;
        let metadata = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("optimizer".to_string(), "RMSprop".to_string()),
            ("param_groups".to_string(), self.param_groups_json()),
        ]);
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| bad(format!("cannot serialise: {e}")))
    }

    /// An optimizer resumed from a saved state: the groups come from `param_groups_json` if
    /// given (PyTorch's `param_groups`, a list or `{"param_groups": [...]}`), else from the
    /// file's metadata.
    ///
    /// # Errors
    /// As [`RmsProp::load_state`].
    pub fn from_state(
        shapes: Vec<Vec<usize>>,
        file: &[u8],
        param_groups_json: Option<&str>,
    ) -> Result<Self, OptimizerError> {
        let groups = read_groups(file, param_groups_json)?;
        let mut opt = RmsProp::with_groups(shapes, groups)?;
        opt.load_state(file, param_groups_json)?;
        Ok(opt)
    }

    /// Replaces the groups and state with those of a saved state (see [`RmsProp::from_state`]
    /// for where the groups come from). Tensors `param.{i}` in the file (PyTorch exports often
    /// carry the parameters) are ignored: parameters belong to the caller.
    ///
    /// # Errors
    /// [`OptimizerError::StateFile`] for a truncated or corrupted file, an unknown key, a wrong
    /// dtype, a tensor index out of range, a missing `square_avg`/`step` (or a `grad_avg` /
    /// `momentum_buffer` its group needs), or a step that is not a non-negative integer (NaN);
    /// [`OptimizerError::ShapeChanged`] for a shape that is not the tensor's;
    /// [`OptimizerError::InvalidGroups`] / [`OptimizerError::InvalidHyperparameter`] for bad
    /// groups. On error the optimizer is unchanged.
    pub fn load_state(
        &mut self,
        file: &[u8],
        param_groups_json: Option<&str>,
    ) -> Result<(), OptimizerError> {
        let groups = read_groups(file, param_groups_json)?;
        let group_of = check_groups(self.len(), &groups)?;
        coefficients::<T>(&groups)?;
        let tensors = SafeTensors::deserialize(file)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        type Partial<T> = (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>, Option<u64>);
        let mut partial: Vec<Partial<T>> = vec![(None, None, None, None); self.len()];
        for (name, view) in tensors.tensors() {
            if let Some(rest) = name.strip_prefix("param.") {
                if rest.parse::<usize>().is_ok() {
                    continue;
                }
            }
            let unknown = || bad(format!("unknown key `{name}`"));
            let rest = name.strip_prefix("state.").ok_or_else(unknown)?;
            let (index, field) = rest.split_once('.').ok_or_else(unknown)?;
            let i: usize = index.parse().map_err(|_| unknown())?;
            if i >= self.len() {
                return Err(bad(format!(
                    "`{name}`: tensor {i} does not exist (the optimizer has {})",
                    self.len()
                )));
            }
            let slot = &mut partial[i];
            if field == "step" {
                let value = match (view.dtype(), view.data().len()) {
                    (Dtype::F32, 4) => decode::<f32>(view.data())[0] as f64,
                    (Dtype::F64, 8) => decode::<f64>(view.data())[0],
                    (dtype, _) => {
                        return Err(bad(format!(
                        "`{name}` must be one F32 (or F64) value, found {dtype:?} of shape {:?}",
                        view.shape()
                    )))
                    }
                };
                if !(value.is_finite()
                    && value >= 0.0
                    && value.fract() == 0.0
                    && value <= 2f64.powi(53))
                {
                    return Err(bad(format!(
                        "`{name}` is {value}, not a non-negative integer"
                    )));
                }
                slot.3 = Some(value as u64);
                continue;
            }
            let target = match field {
                "square_avg" => &mut slot.0,
                "grad_avg" => &mut slot.1,
                "momentum_buffer" => &mut slot.2,
                _ => return Err(unknown()),
            };
            if view.dtype() != dtype_of::<T>() {
                return Err(bad(format!(
                    "`{name}` has dtype {:?}, this optimizer steps {} ({:?})",
                    view.dtype(),
                    T::NAME,
                    dtype_of::<T>()
                )));
            }
            if view.shape() != self.shapes[i].as_slice() {
                return Err(OptimizerError::ShapeChanged {
                    tensor: i,
                    buffer: name.to_string(),
                    expected: self.shapes[i].clone(),
                    actual: view.shape().to_vec(),
                });
            }
            *target = Some(decode::<T>(view.data()));
        }
        let mut state = Vec::with_capacity(self.len());
        for (i, (square_avg, grad_avg, momentum_buffer, step)) in partial.into_iter().enumerate() {
            if square_avg.is_none()
                && grad_avg.is_none()
                && momentum_buffer.is_none()
                && step.is_none()
            {
                state.push(None);
                continue;
            }
            let missing = |what: &str| bad(format!("missing key `state.{i}.{what}`"));
            let (centered, momentum) = groups[group_of[i]].hyperparameters.uses_state();
            if centered && grad_avg.is_none() {
                return Err(missing("grad_avg"));
            }
            if momentum && momentum_buffer.is_none() {
                return Err(missing("momentum_buffer"));
            }
            state.push(Some(TensorState {
                step: step.ok_or_else(|| missing("step"))?,
                square_avg: square_avg.ok_or_else(|| missing("square_avg"))?,
                grad_avg,
                momentum_buffer,
            }));
        }
        self.groups = groups;
        self.group_of = group_of;
        self.state = state;
        Ok(())
    }
}

fn read_groups(
    file: &[u8],
    param_groups_json: Option<&str>,
) -> Result<Vec<ParamGroup>, OptimizerError> {
    match param_groups_json {
        Some(json) => parse_param_groups(json),
        None => {
            let (_, metadata) = SafeTensors::read_metadata(file)
                .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
            let json = metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get("param_groups"))
                .ok_or_else(|| bad("the file has no `param_groups` metadata and none was given"))?;
            parse_param_groups(json)
        }
    }
}
