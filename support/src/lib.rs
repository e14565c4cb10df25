//! What rmsprop-simd's tests, benches, examples and fuzz targets share (not published):
//!
//! - [`backends`]: which backends a test runs, padded buffers, bitwise comparison with the
//!   reference;
//! - [`golden`]: the golden-set reader and the comparison rule of `tests/golden/README.md`;
//! - [`rng`]: seeded random inputs (`rand` + `rand_xorshift`), so failures reproduce;
//! - [`state`]: owned state buffers and the [`State`](rmsprop_simd::State) a set of
//!   hyperparameters needs;
//! - [`timing`]: the interleaved best-of-rounds timer of the performance examples;
//! - [`workloads`], [`multipass`], [`model`]: benchmark workloads, the multi-pass baseline and
//!   the whole-model comparison.

pub mod backends;
pub mod golden;
#[cfg(feature = "optimizer")]
pub mod model;
pub mod multipass;
pub mod rng;
pub mod state;
pub mod timing;
pub mod workloads;

/// The model shape lists (`name AxBxC` per line) of `support/models/`.
pub mod models {
    /// ResNet-50's 161 parameter tensors.
    pub const RESNET50: &str = include_str!("../models/resnet50.txt");
    /// GPT-2 small's 148 parameter tensors.
    pub const GPT2_SMALL: &str = include_str!("../models/gpt2-small.txt");
}
