//! Saving and loading the optimizer state as safetensors, under PyTorch's `state_dict` names.
//!
//! # Format
//! Tensors: `state.{i}.square_avg`, `state.{i}.grad_avg`, `state.{i}.momentum_buffer` (the
//! tensor's shape, the state's storage dtype: `F32`, `F64`, `BF16` or `F16`, as PyTorch saves
//! the state of parameters of that dtype) and `state.{i}.step`, a 0-d tensor as PyTorch keeps
//! it: `F32`, or `F64` (what PyTorch writes when its default dtype is `float64`; this crate
//! writes `F64` only for a step count above 2^24, which `F32` cannot hold exactly). `{i}` is
//! written canonically (`0`, `7`, `12`: no sign, no leading zero). Tensors `param.{i}` (PyTorch
//! exports often carry the parameters) are ignored on load. The parameter groups are PyTorch's
//! `state_dict()['param_groups']` as JSON: a list of `{"lr", "alpha", "eps", "weight_decay",
//! "momentum", "centered", "maximize", "params"}` objects, plus any of PyTorch's scheduler keys
//! ([`SCHEDULER_KEYS`], kept and written back) and `foreach` / `capturable` / `differentiable`
//! (accepted, not kept: they do not change CPU results), stored in the file's metadata under
//! `param_groups` (or given beside the file). A group with optax's or Keras's semantics adds
//! `"semantics": "optax"` with `initial_scale`, `eps_in_sqrt`, `nesterov`, `bias_correction`,
//! or `"semantics": "keras"` with `lr_through_f32`, so a resumed run continues with the same
//! arithmetic (and optax's bias correction with each tensor's saved step count); PyTorch groups
//! carry none of these keys.
//!
//! # What loading refuses
//! Anything that could be read two ways: a duplicate key in any JSON object (the header, its
//! metadata, `param_groups`), a non-canonical index, an unknown tensor name, a state tensor of
//! another dtype or shape, a step that is not a 0-d `F32`/`F64` non-negative integer, a header
//! larger than [`header_limit`] for the optimizer's tensor count (refused before it is parsed),
//! and everything the safetensors format itself forbids (overlapping or truncated data, shapes
//! whose size overflows). The header is parsed once.
//!
//! # Determinism
//! [`RmsProp::save_state`] writes the same bytes for the same state: tensors in index order
//! (8-byte dtypes first, so every tensor stays aligned), JSON keys in a fixed order.

use super::{check_groups, coefficients, OptimizerError, ParamGroup, RmsProp, TensorState};
use crate::{Buffer, Format, Hyperparameters, KerasOptions, OptaxOptions, Semantics, Storage};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

/// The keys PyTorch's LR schedulers add to a param group (`StepLR`, `CosineAnnealingLR`,
/// `LambdaLR`, ...: `initial_lr`; `OneCycleLR`: `max_lr`, `min_lr`, `base_momentum`,
/// `max_momentum`). Loading accepts them (numbers), [`ParamGroup::extra`] keeps them, saving
/// writes them back.
pub const SCHEDULER_KEYS: [&str; 5] = [
    "initial_lr",
    "max_lr",
    "min_lr",
    "base_momentum",
    "max_momentum",
];

/// Keys PyTorch writes in an RMSprop param group that do not change CPU results: accepted (a
/// boolean or null), not kept.
const IGNORED_GROUP_KEYS: [&str; 3] = ["foreach", "capturable", "differentiable"];

/// Keys of a group with optax semantics (`"semantics": "optax"`), and with Keras's.
const OPTAX_KEYS: [&str; 4] = [
    "initial_scale",
    "eps_in_sqrt",
    "nesterov",
    "bias_correction",
];
const KERAS_KEYS: [&str; 1] = ["lr_through_f32"];

/// The hyperparameter keys, with `params`.
const GROUP_KEYS: [&str; 8] = [
    "lr",
    "alpha",
    "eps",
    "weight_decay",
    "momentum",
    "centered",
    "maximize",
    "params",
];

/// The largest header (in bytes) a state file for `tensors` tensors may have: 64 KiB plus 1 KiB
/// per tensor, far above what this crate or PyTorch writes (about 300 bytes per tensor with
/// every state buffer, and the `param_groups` JSON). A larger header is refused before it is
/// parsed, so a hostile file costs no more than reading its first 8 bytes.
///
/// ```
/// assert_eq!(rmsprop_simd::header_limit(0), 65536);
/// ```
pub fn header_limit(tensors: usize) -> u64 {
    65536u64.saturating_add((tensors as u64).saturating_mul(1024))
}

/// What is wrong with a group's key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupKeyProblem {
    /// A required key is absent.
    Missing,
    /// The value has another type (or is out of range).
    WrongType {
        /// What it must be.
        expected: &'static str,
    },
    /// A key that is neither a hyperparameter, nor `params`, nor a scheduler or ignored key.
    Unknown,
}

/// Why a state file or `param_groups` JSON was refused.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum StateFileError {
    /// Not a valid safetensors file (truncated, bad header length, bad JSON, overlapping or
    /// missing data, a size that overflows): the reason.
    Safetensors(String),
    /// The header is longer than [`header_limit`] allows for this optimizer.
    HeaderTooLarge {
        /// The header length the file declares.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// A JSON object (the header, its `__metadata__`, or `param_groups`) has a key twice.
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A tensor name whose index is not canonical (`state.00.step`, `state.+1.step`).
    NonCanonicalIndex {
        /// The tensor name.
        name: String,
    },
    /// A tensor name that is not `state.{i}.{square_avg,grad_avg,momentum_buffer,step}` or
    /// `param.{i}`.
    UnknownTensor {
        /// The tensor name.
        name: String,
    },
    /// A `state.{i}.*` tensor whose index is not one of the optimizer's tensors.
    TensorOutOfRange {
        /// The tensor name.
        name: String,
        /// How many tensors the optimizer has.
        tensors: usize,
    },
    /// A state buffer whose dtype is not the optimizer's element type.
    WrongDtype {
        /// The tensor name.
        name: String,
        /// The dtype in the file.
        found: String,
        /// The dtype expected (`F32` or `F64`).
        expected: &'static str,
    },
    /// A step that is not a 0-d `F32` or `F64` tensor.
    StepNotScalar {
        /// The tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A step that is not a non-negative integer of at most 2^53.
    StepValue {
        /// The tensor name.
        name: String,
        /// The value.
        value: f64,
    },
    /// A tensor has state entries but not this one (`square_avg`).
    MissingBuffer {
        /// The tensor's index.
        tensor: usize,
        /// The buffer.
        buffer: Buffer,
    },
    /// A tensor has state entries but no step.
    MissingStep {
        /// The tensor's index.
        tensor: usize,
    },
    /// The file has no `param_groups` metadata and none was given.
    NoParamGroups,
    /// `param_groups` is not valid JSON: the parser's message.
    ParamGroupsJson(String),
    /// `param_groups` is neither a list of objects nor an object with a `param_groups` list.
    ParamGroupsNotList,
    /// A group entry that is not a JSON object.
    GroupNotObject {
        /// The group's index.
        group: usize,
    },
    /// A key of a group is missing, of the wrong type or unknown.
    GroupKey {
        /// The group's index.
        group: usize,
        /// The key.
        key: String,
        /// What is wrong.
        problem: GroupKeyProblem,
    },
}

impl fmt::Display for StateFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use StateFileError as E;
        match self {
            E::Safetensors(why) => write!(f, "not a valid safetensors file: {why}"),
            E::HeaderTooLarge { len, limit } => write!(
                f,
                "the header declares {len} bytes, more than the {limit} a state file for this \
                 optimizer can need"
            ),
            E::DuplicateKey { key } => write!(f, "the key `{key}` appears twice in one object"),
            E::NonCanonicalIndex { name } => write!(
                f,
                "`{name}`: the index is not written canonically (no sign, no leading zero)"
            ),
            E::UnknownTensor { name } => write!(f, "unknown tensor `{name}`"),
            E::TensorOutOfRange { name, tensors } => {
                write!(f, "`{name}`: no such tensor (the optimizer has {tensors})")
            }
            E::WrongDtype {
                name,
                found,
                expected,
            } => write!(f, "`{name}` has dtype {found}, expected {expected}"),
            E::StepNotScalar { name, dtype, shape } => write!(
                f,
                "`{name}` must be a 0-d F32 or F64 tensor, found {dtype} of shape {shape:?}"
            ),
            E::StepValue { name, value } => write!(
                f,
                "`{name}` is {value}, not a non-negative integer of at most 2^53"
            ),
            E::MissingBuffer { tensor, buffer } => {
                write!(
                    f,
                    "tensor {tensor} has state but no `state.{tensor}.{buffer}`"
                )
            }
            E::MissingStep { tensor } => {
                write!(f, "tensor {tensor} has state but no `state.{tensor}.step`")
            }
            E::NoParamGroups => write!(
                f,
                "the file has no `param_groups` metadata and none was given"
            ),
            E::ParamGroupsJson(why) => write!(f, "param_groups is not valid JSON: {why}"),
            E::ParamGroupsNotList => write!(
                f,
                "param_groups is neither a list nor an object with a `param_groups` list"
            ),
            E::GroupNotObject { group } => write!(f, "param_groups[{group}] is not an object"),
            E::GroupKey {
                group,
                key,
                problem,
            } => match problem {
                GroupKeyProblem::Missing => write!(f, "param_groups[{group}] has no `{key}`"),
                GroupKeyProblem::WrongType { expected } => {
                    write!(f, "param_groups[{group}].{key} is not {expected}")
                }
                GroupKeyProblem::Unknown => {
                    write!(f, "param_groups[{group}] has unknown key `{key}`")
                }
            },
        }
    }
}

impl std::error::Error for StateFileError {}

impl From<StateFileError> for OptimizerError {
    fn from(e: StateFileError) -> Self {
        OptimizerError::StateFile(e)
    }
}

// ---------------------------------------------------------------- strict JSON

/// Deserializes any JSON value, refusing an object with a key twice (serde_json's `Value` keeps
/// the last). The duplicate is reported through `duplicate`, so it becomes a typed error.
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(key.clone());
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Parses `text` as JSON, refusing duplicate keys; `invalid` wraps any other parse error.
fn parse_strict(
    text: &str,
    invalid: impl FnOnce(String) -> StateFileError,
) -> Result<Value, StateFileError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Strict {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => Err(match duplicate.into_inner() {
            Some(key) => StateFileError::DuplicateKey { key },
            None => invalid(e.to_string()),
        }),
    }
}

// ---------------------------------------------------------------- param_groups

/// Parses PyTorch's `param_groups` JSON: a list, or an object with a `param_groups` list.
pub(super) fn parse_param_groups(json: &str) -> Result<Vec<ParamGroup>, StateFileError> {
    let value = parse_strict(json, StateFileError::ParamGroupsJson)?;
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(o) => o
            .get("param_groups")
            .and_then(Value::as_array)
            .ok_or(StateFileError::ParamGroupsNotList)?,
        _ => return Err(StateFileError::ParamGroupsNotList),
    };
    list.iter()
        .enumerate()
        .map(|(group, entry)| parse_group(group, entry))
        .collect()
}

fn parse_group(group: usize, entry: &Value) -> Result<ParamGroup, StateFileError> {
    let o = entry
        .as_object()
        .ok_or(StateFileError::GroupNotObject { group })?;
    let problem = |key: &str, problem| StateFileError::GroupKey {
        group,
        key: key.to_string(),
        problem,
    };
    let wrong = |key: &str, expected| problem(key, GroupKeyProblem::WrongType { expected });
    let get = |key: &str| {
        o.get(key)
            .ok_or_else(|| problem(key, GroupKeyProblem::Missing))
    };
    let number = |key: &str| get(key)?.as_f64().ok_or_else(|| wrong(key, "a number"));
    let flag = |key: &str| get(key)?.as_bool().ok_or_else(|| wrong(key, "a boolean"));
    let semantics_name = match o.get("semantics") {
        None => "pytorch",
        Some(Value::String(name)) => name.as_str(),
        Some(_) => return Err(wrong("semantics", "a string")),
    };
    let semantics_keys: &[&str] = match semantics_name {
        "pytorch" => &[],
        "optax" => &OPTAX_KEYS,
        "keras" => &KERAS_KEYS,
        _ => return Err(wrong("semantics", "\"pytorch\", \"optax\" or \"keras\"")),
    };
    let mut extra = BTreeMap::new();
    for (key, value) in o {
        if GROUP_KEYS.contains(&key.as_str())
            || key == "semantics"
            || semantics_keys.contains(&key.as_str())
        {
            continue;
        }
        if IGNORED_GROUP_KEYS.contains(&key.as_str()) {
            if !(value.is_boolean() || value.is_null()) {
                return Err(wrong(key, "a boolean or null"));
            }
        } else if SCHEDULER_KEYS.contains(&key.as_str()) {
            let v = value.as_f64().ok_or_else(|| wrong(key, "a number"))?;
            extra.insert(key.clone(), v);
        } else {
            return Err(problem(key, GroupKeyProblem::Unknown));
        }
    }
    let params = get("params")?
        .as_array()
        .ok_or_else(|| wrong("params", "a list of tensor indices"))?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| wrong("params", "a list of tensor indices"))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let semantics = match semantics_name {
        "optax" => Semantics::Optax(OptaxOptions {
            initial_scale: number("initial_scale")?,
            eps_in_sqrt: flag("eps_in_sqrt")?,
            nesterov: flag("nesterov")?,
            bias_correction: flag("bias_correction")?,
        }),
        "keras" => Semantics::Keras(KerasOptions {
            lr_through_f32: flag("lr_through_f32")?,
        }),
        _ => Semantics::PyTorch,
    };
    Ok(ParamGroup {
        hyperparameters: Hyperparameters {
            lr: number("lr")?,
            alpha: number("alpha")?,
            eps: number("eps")?,
            weight_decay: number("weight_decay")?,
            momentum: number("momentum")?,
            centered: flag("centered")?,
            maximize: flag("maximize")?,
            semantics,
            step: 0,
        },
        params,
        extra,
    })
}

/// The groups as PyTorch's `param_groups` JSON value (keys in a fixed order).
fn groups_json(groups: &[ParamGroup]) -> Result<Value, StateFileError> {
    let mut list = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let h = &group.hyperparameters;
        let mut o = Map::new();
        for (key, value) in [
            ("lr", h.lr),
            ("alpha", h.alpha),
            ("eps", h.eps),
            ("weight_decay", h.weight_decay),
            ("momentum", h.momentum),
        ] {
            o.insert(key.into(), Value::from(value));
        }
        o.insert("centered".into(), Value::Bool(h.centered));
        o.insert("maximize".into(), Value::Bool(h.maximize));
        o.insert("params".into(), Value::from(group.params.clone()));
        // PyTorch groups stay exactly PyTorch's; the others say whose arithmetic they follow.
        match h.semantics {
            Semantics::PyTorch => {}
            Semantics::Optax(x) => {
                o.insert("semantics".into(), Value::from("optax"));
                o.insert("initial_scale".into(), Value::from(x.initial_scale));
                o.insert("eps_in_sqrt".into(), Value::Bool(x.eps_in_sqrt));
                o.insert("nesterov".into(), Value::Bool(x.nesterov));
                o.insert("bias_correction".into(), Value::Bool(x.bias_correction));
            }
            Semantics::Keras(x) => {
                o.insert("semantics".into(), Value::from("keras"));
                o.insert("lr_through_f32".into(), Value::Bool(x.lr_through_f32));
            }
        }
        for (key, &value) in &group.extra {
            if !SCHEDULER_KEYS.contains(&key.as_str()) {
                return Err(StateFileError::GroupKey {
                    group: g,
                    key: key.clone(),
                    problem: GroupKeyProblem::Unknown,
                });
            }
            if !value.is_finite() {
                return Err(StateFileError::GroupKey {
                    group: g,
                    key: key.clone(),
                    problem: GroupKeyProblem::WrongType {
                        expected: "a finite number",
                    },
                });
            }
            o.insert(key.clone(), Value::from(value));
        }
        list.push(Value::Object(o));
    }
    Ok(Value::Array(list))
}

// ---------------------------------------------------------------- the file

/// The safetensors dtype of a state buffer stored as `T`.
fn dtype_of<T: Storage>() -> (Dtype, &'static str) {
    match T::FORMAT {
        Format::F32 => (Dtype::F32, "F32"),
        Format::F64 => (Dtype::F64, "F64"),
        Format::Bf16 => (Dtype::BF16, "BF16"),
        Format::F16 => (Dtype::F16, "F16"),
    }
}

fn encode<T: bytemuck::Pod>(values: &[T]) -> Vec<u8> {
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

fn decode<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
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

/// A parsed, validated file: its metadata and each tensor's name, dtype, shape and bytes.
struct Parsed<'f> {
    metadata: BTreeMap<String, String>,
    tensors: Vec<(String, Dtype, Vec<usize>, &'f [u8])>,
}

/// Reads the header once (bounded by [`header_limit`] for `tensors` tensors), refuses duplicate
/// keys, and lets safetensors validate the layout.
fn parse_file(file: &[u8], tensors: usize) -> Result<Parsed<'_>, StateFileError> {
    let invalid = |why: String| StateFileError::Safetensors(why);
    let Some((len_bytes, rest)) = file.split_first_chunk::<8>() else {
        return Err(invalid(format!(
            "{} bytes, shorter than the 8-byte header length",
            file.len()
        )));
    };
    let len = u64::from_le_bytes(*len_bytes);
    let limit = header_limit(tensors);
    if len > limit {
        return Err(StateFileError::HeaderTooLarge { len, limit });
    }
    let len = len as usize; // <= limit, which fits in usize on every supported target
    if len > rest.len() {
        return Err(invalid(format!(
            "the header declares {len} bytes, the file has {} after the length",
            rest.len()
        )));
    }
    let (header, data) = rest.split_at(len);
    let header = std::str::from_utf8(header)
        .map_err(|e| invalid(format!("the header is not UTF-8: {e}")))?;
    let Value::Object(entries) = parse_strict(header, invalid)? else {
        return Err(invalid("the header is not a JSON object".into()));
    };
    let mut metadata = BTreeMap::new();
    let mut infos = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            let Value::Object(m) = value else {
                return Err(invalid("`__metadata__` is not an object".into()));
            };
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(invalid(format!("`__metadata__.{k}` is not a string")));
                };
                metadata.insert(k, v);
            }
            continue;
        }
        let info: TensorInfo =
            serde_json::from_value(value).map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
        infos.push((name, info));
    }
    infos.sort_by_key(|(_, info)| info.data_offsets);
    // safetensors' own checks: contiguous, non-overlapping offsets, sizes that match the shapes
    // without overflow.
    let layout = Metadata::new(None, infos.clone()).map_err(|e| invalid(e.to_string()))?;
    if layout.data_len() != data.len() {
        return Err(invalid(format!(
            "the header describes {} bytes of data, the file has {}",
            layout.data_len(),
            data.len()
        )));
    }
    let tensors = infos
        .into_iter()
        .map(|(name, info)| {
            let (start, end) = info.data_offsets;
            (name, info.dtype, info.shape, &data[start..end])
        })
        .collect();
    Ok(Parsed { metadata, tensors })
}

/// `i` from a canonical decimal index: `0`, or digits without a leading zero.
fn canonical_index(text: &str) -> Option<Result<usize, ()>> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse::<usize>().map_err(|_| ()))
}

/// Writes a safetensors file with the same bytes for the same input: `tensors` in the order
/// given (8-byte dtypes first, to keep every tensor aligned), JSON keys in a fixed order, the
/// header padded with spaces to a multiple of 8 (as safetensors does).
fn write_file(
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: &[(&str, String)],
) -> Vec<u8> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].1.bitsize()));
    // serde_json's map is sorted (or, with `preserve_order`, kept in insertion order): both are
    // deterministic.
    let mut header = String::from("{");
    let mut push = |key: &str, value: Value| {
        if header.len() > 1 {
            header.push(',');
        }
        header.push_str(&Value::String(key.to_string()).to_string());
        header.push(':');
        header.push_str(&value.to_string());
    };
    let mut meta = Map::new();
    for (k, v) in metadata {
        meta.insert((*k).to_string(), Value::String(v.clone()));
    }
    push("__metadata__", Value::Object(meta));
    let mut offset = 0usize;
    for &i in &order {
        let (name, dtype, shape, data) = &tensors[i];
        let mut info = Map::new();
        info.insert("dtype".into(), Value::String(format!("{dtype}")));
        info.insert("shape".into(), Value::from(shape.clone()));
        info.insert(
            "data_offsets".into(),
            Value::from(vec![offset, offset + data.len()]),
        );
        offset += data.len();
        push(name, Value::Object(info));
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &i in &order {
        out.extend_from_slice(&tensors[i].3);
    }
    out
}

impl<T: Storage> RmsProp<T> {
    /// PyTorch's `state_dict()['param_groups']` as a JSON list, scheduler keys included.
    ///
    /// ```
    /// use rmsprop_simd::{Hyperparameters, RmsProp};
    /// let opt = RmsProp::<f32>::new(vec![vec![2, 2]], Hyperparameters::default()).unwrap();
    /// assert!(opt.param_groups_json().unwrap().contains("\"alpha\":0.99"));
    /// ```
    ///
    /// # Errors
    /// [`OptimizerError::StateFile`] for a scheduler key in [`ParamGroup::extra`] that is not one
    /// of [`SCHEDULER_KEYS`] or not finite.
    pub fn param_groups_json(&self) -> Result<String, OptimizerError> {
        Ok(groups_json(&self.groups)?.to_string())
    }

    /// The state as a safetensors file (PyTorch's names; `param_groups` JSON in the metadata,
    /// with `format: pt` and `optimizer: RMSprop`). The same state gives the same bytes.
    /// A buffer a group needs but a tensor's state lacks (the group was switched to `centered`
    /// or `momentum` after that tensor's last step) is written as the zeros the next step would
    /// start it from, so the file is complete and PyTorch can step it.
    ///
    /// # Errors
    /// [`OptimizerError::InvalidHyperparameter`] if a group's hyperparameters are invalid for
    /// `T` (a NaN `lr` set through [`RmsProp::hyperparameters_mut`]): the file would not load.
    /// [`OptimizerError::StateFile`] for an invalid scheduler key.
    pub fn save_state(&self) -> Result<Vec<u8>, OptimizerError> {
        coefficients::<T::Compute>(&self.groups)?;
        let groups = groups_json(&self.groups)?.to_string();
        let (dtype, _) = dtype_of::<T>();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, state) in self.state.iter().enumerate() {
            let Some(s) = state else { continue };
            let shape = &self.shapes[i];
            let (centered, momentum) = self.groups[self.group_of[i]].hyperparameters.uses_state();
            let zeros = || encode(&vec![T::default(); self.lens[i]]);
            tensors.push((
                format!("state.{i}.square_avg"),
                dtype,
                shape.clone(),
                encode(&s.square_avg),
            ));
            for (name, buffer, needed) in [
                ("grad_avg", &s.grad_avg, centered),
                ("momentum_buffer", &s.momentum_buffer, momentum),
            ] {
                let data = match buffer {
                    Some(b) => encode(b),
                    None if needed => zeros(),
                    None => continue,
                };
                tensors.push((format!("state.{i}.{name}"), dtype, shape.clone(), data));
            }
            // F32 holds every count up to 2^24 exactly (PyTorch's choice); beyond, F64.
            let step = if s.step <= 1 << 24 {
                (Dtype::F32, encode(&[s.step as f32]))
            } else {
                (Dtype::F64, encode(&[s.step as f64]))
            };
            tensors.push((format!("state.{i}.step"), step.0, vec![], step.1));
        }
        Ok(write_file(
            &tensors,
            &[
                ("format", "pt".to_string()),
                ("optimizer", "RMSprop".to_string()),
                ("param_groups", groups),
            ],
        ))
    }

    /// An optimizer resumed from a saved state: the groups come from `param_groups_json` if
    /// given (PyTorch's `param_groups`, a list or `{"param_groups": [...]}`), else from the
    /// file's metadata. The file is parsed once.
    ///
    /// # Errors
    /// As [`RmsProp::load_state`], and [`OptimizerError::ShapeOverflow`].
    pub fn from_state(
        shapes: Vec<Vec<usize>>,
        file: &[u8],
        param_groups_json: Option<&str>,
    ) -> Result<Self, OptimizerError> {
        let parsed = parse_file(file, shapes.len())?;
        let groups = read_groups(&parsed, param_groups_json)?;
        let mut opt = RmsProp::with_groups(shapes, groups.clone())?;
        opt.load_parsed(parsed, groups)?;
        Ok(opt)
    }

    /// Replaces the groups and state with those of a saved state (see [`RmsProp::from_state`]
    /// for where the groups come from). Tensors `param.{i}` in the file are ignored: parameters
    /// belong to the caller. A tensor whose group needs `grad_avg` or `momentum_buffer` but whose
    /// state lacks it starts that buffer at zero at its next step, exactly as [`RmsProp::step`]
    /// does after such a switch.
    ///
    /// # Errors
    /// [`OptimizerError::StateFile`] with a [`StateFileError`] saying what is wrong with the
    /// file or the groups (see the module docs: duplicate keys, non-canonical indices, unknown
    /// tensors, wrong dtypes, a bad step, a header too large, a malformed file);
    /// [`OptimizerError::ShapeChanged`] for a shape that is not the tensor's;
    /// [`OptimizerError::InvalidGroups`] / [`OptimizerError::InvalidHyperparameter`] for bad
    /// groups. On error the optimizer is unchanged.
    pub fn load_state(
        &mut self,
        file: &[u8],
        param_groups_json: Option<&str>,
    ) -> Result<(), OptimizerError> {
        let parsed = parse_file(file, self.len())?;
        let groups = read_groups(&parsed, param_groups_json)?;
        self.load_parsed(parsed, groups)
    }

    fn load_parsed(
        &mut self,
        parsed: Parsed<'_>,
        groups: Vec<ParamGroup>,
    ) -> Result<(), OptimizerError> {
        let group_of = check_groups(self.len(), &groups)?;
        coefficients::<T::Compute>(&groups)?;
        groups_json(&groups)?;
        let (dtype, dtype_name) = dtype_of::<T>();
        let n = self.len();
        type Partial<T> = (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>, Option<u64>);
        let mut partial: Vec<Partial<T>> = vec![(None, None, None, None); n];
        for (name, view_dtype, shape, data) in parsed.tensors {
            let unknown = || StateFileError::UnknownTensor { name: name.clone() };
            let (prefix, index, field) = match name.split_once('.') {
                Some(("param", index)) => ("param", index, ""),
                Some(("state", rest)) => {
                    let (index, field) = rest.split_once('.').ok_or_else(unknown)?;
                    ("state", index, field)
                }
                _ => return Err(unknown().into()),
            };
            let Some(i) = canonical_index(index) else {
                return Err(StateFileError::NonCanonicalIndex { name }.into());
            };
            if prefix == "param" {
                continue;
            }
            let i = match i {
                Ok(i) if i < n => i,
                _ => return Err(StateFileError::TensorOutOfRange { name, tensors: n }.into()),
            };
            let slot = &mut partial[i];
            let duplicate = || StateFileError::DuplicateKey { key: name.clone() };
            if field == "step" {
                let value = match (view_dtype, shape.as_slice()) {
                    (Dtype::F32, []) => decode::<f32>(data)[0] as f64,
                    (Dtype::F64, []) => decode::<f64>(data)[0],
                    _ => {
                        return Err(StateFileError::StepNotScalar {
                            dtype: format!("{view_dtype}"),
                            shape,
                            name,
                        }
                        .into())
                    }
                };
                if !(value.is_finite()
                    && value >= 0.0
                    && value.fract() == 0.0
                    && value <= 2f64.powi(53))
                {
                    return Err(StateFileError::StepValue { name, value }.into());
                }
                if slot.3.replace(value as u64).is_some() {
                    return Err(duplicate().into());
                }
                continue;
            }
            let (target, buffer) = match field {
                "square_avg" => (&mut slot.0, Buffer::SquareAvg),
                "grad_avg" => (&mut slot.1, Buffer::GradAvg),
                "momentum_buffer" => (&mut slot.2, Buffer::MomentumBuffer),
                _ => return Err(unknown().into()),
            };
            if view_dtype != dtype {
                return Err(StateFileError::WrongDtype {
                    found: format!("{view_dtype}"),
                    expected: dtype_name,
                    name,
                }
                .into());
            }
            if shape != self.shapes[i] {
                return Err(OptimizerError::ShapeChanged {
                    tensor: i,
                    buffer,
                    expected: self.shapes[i].clone(),
                    actual: shape,
                });
            }
            if target.replace(decode::<T>(data)).is_some() {
                return Err(duplicate().into());
            }
        }
        let mut state = Vec::with_capacity(n);
        for (tensor, (square_avg, grad_avg, momentum_buffer, step)) in
            partial.into_iter().enumerate()
        {
            if square_avg.is_none()
                && grad_avg.is_none()
                && momentum_buffer.is_none()
                && step.is_none()
            {
                state.push(None);
                continue;
            }
            state.push(Some(TensorState {
                step: step.ok_or(StateFileError::MissingStep { tensor })?,
                square_avg: square_avg.ok_or(StateFileError::MissingBuffer {
                    tensor,
                    buffer: Buffer::SquareAvg,
                })?,
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
    parsed: &Parsed<'_>,
    param_groups_json: Option<&str>,
) -> Result<Vec<ParamGroup>, StateFileError> {
    let json = match param_groups_json {
        Some(json) => json,
        None => parsed
            .metadata
            .get("param_groups")
            .ok_or(StateFileError::NoParamGroups)?,
    };
    parse_param_groups(json)
}
