//! A training loop over several tensors with `RmsProp`: a two-layer MLP (hand-written
//! backpropagation) on generated data, two parameter groups, a cosine learning-rate schedule,
//! and a save/resume of the optimizer state half-way (checked to continue bit for bit).
//!
//! ```text
//! cargo run --release --example training_loop [-- STATE_PATH]
//! ```
//! The optimizer state is written to `target/training_loop/optimizer.safetensors` unless a path
//! is given.

use rmsprop_simd::{Hyperparameters, OptimizerError, ParamGroup, RmsProp};

const INPUTS: usize = 16;
const HIDDEN: usize = 32;
const SAMPLES: usize = 2048;
const EPOCHS: usize = 200;

/// Parameters: `w1` (HIDDEN x INPUTS), `b1` (HIDDEN), `w2` (HIDDEN), `b2` (1).
type Model = [Vec<f32>; 4];

/// Uniform in [-1, 1), from the support crate's seeded generator.
fn rng(state: &mut rmsprop_simd_support::rng::TestRng) -> f32 {
    rmsprop_simd_support::rng::uniform_f32(state, 1, -1.0, 1.0)[0]
}

/// Mean squared error and its gradient with respect to every tensor.
fn loss_and_grads(m: &Model, xs: &[f32], ys: &[f32]) -> (f32, Model) {
    let [w1, b1, w2, b2] = m;
    let mut g: Model = [
        vec![0.0; w1.len()],
        vec![0.0; b1.len()],
        vec![0.0; w2.len()],
        vec![0.0; 1],
    ];
    let mut loss = 0.0;
    let mut h = [0.0f32; HIDDEN];
    for (x, &y) in xs.chunks_exact(INPUTS).zip(ys) {
        for j in 0..HIDDEN {
            let z: f32 = (0..INPUTS).map(|k| w1[j * INPUTS + k] * x[k]).sum::<f32>() + b1[j];
            h[j] = z.tanh();
        }
        let out: f32 = (0..HIDDEN).map(|j| w2[j] * h[j]).sum::<f32>() + b2[0];
        let err = out - y;
        loss += err * err;
        let d_out = 2.0 * err / SAMPLES as f32;
        g[3][0] += d_out;
        for j in 0..HIDDEN {
            g[2][j] += d_out * h[j];
            let d_z = d_out * w2[j] * (1.0 - h[j] * h[j]);
            g[1][j] += d_z;
            for k in 0..INPUTS {
                g[0][j * INPUTS + k] += d_z * x[k];
            }
        }
    }
    (loss / SAMPLES as f32, g)
}

fn train(
    opt: &mut RmsProp<f32>,
    model: &mut Model,
    xs: &[f32],
    ys: &[f32],
    epochs: std::ops::Range<usize>,
    print: bool,
) -> Result<f32, OptimizerError> {
    let mut loss = 0.0;
    for epoch in epochs {
        let (l, grads) = loss_and_grads(model, xs, ys);
        loss = l;
        if print && epoch % 25 == 0 {
            println!(
                "epoch {epoch:>3}  lr {:.5}  loss {loss:.5}",
                opt.param_groups()[0].hyperparameters.lr
            );
        }
        // cosine schedule, applied to both groups
        let scale = 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / EPOCHS as f64).cos());
        opt.hyperparameters_mut(0).unwrap().lr = 3e-3 * scale;
        opt.hyperparameters_mut(1).unwrap().lr = 1e-2 * scale;
        let mut params: Vec<&mut [f32]> = model.iter_mut().map(|p| &mut p[..]).collect();
        let grads: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(&g[..])).collect();
        opt.step(&mut params, &grads)?;
    }
    Ok(loss)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seed = rmsprop_simd_support::rng::seeded(0x2545_F491_4F6C_DD1D);
    let xs: Vec<f32> = (0..SAMPLES * INPUTS).map(|_| rng(&mut seed)).collect();
    let ys: Vec<f32> = xs
        .chunks_exact(INPUTS)
        .map(|x| (x.iter().sum::<f32>() * 0.5).sin())
        .collect();
    let mut model: Model = [
        (0..HIDDEN * INPUTS).map(|_| 0.3 * rng(&mut seed)).collect(),
        vec![0.0; HIDDEN],
        (0..HIDDEN).map(|_| 0.3 * rng(&mut seed)).collect(),
        vec![0.0; 1],
    ];
    let shapes = vec![vec![HIDDEN, INPUTS], vec![HIDDEN], vec![1, HIDDEN], vec![1]];
    let d = Hyperparameters::default();
    let groups = vec![
        // weights: momentum and weight decay
        ParamGroup {
            hyperparameters: Hyperparameters {
                lr: 3e-3,
                momentum: 0.9,
                weight_decay: 1e-4,
                ..d
            },
            params: vec![0, 2],
            ..Default::default()
        },
        // biases: plain RMSprop
        ParamGroup {
            hyperparameters: Hyperparameters { lr: 1e-2, ..d },
            params: vec![1, 3],
            ..Default::default()
        },
    ];
    let mut opt = RmsProp::<f32>::with_groups(shapes.clone(), groups)?;
    println!(
        "backend {}; {} parameter groups, {} tensors, {} parameters",
        opt.kernel().backend(),
        opt.param_groups().len(),
        shapes.len(),
        shapes
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum::<usize>()
    );

    let half = EPOCHS / 2;
    train(&mut opt, &mut model, &xs, &ys, 0..half, true)?;

    // Save the optimizer state (safetensors, PyTorch's state_dict names) and the parameters.
    // Under target/ unless a path is given: `cargo run --release --example training_loop -- PATH`.
    let path = std::env::args_os().nth(1).map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/training_loop/optimizer.safetensors")
        },
        std::path::PathBuf::from,
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, opt.save_state()?)?;
    println!(
        "saved optimizer state to {} ({} bytes)",
        path.display(),
        std::fs::metadata(&path)?.len()
    );
    let saved_model = model.clone();

    // Keep going uninterrupted...
    let final_loss = train(&mut opt, &mut model, &xs, &ys, half..EPOCHS, true)?;
    println!("final loss {final_loss:.5}");

    // ...and resume from the file in a fresh optimizer: the same trajectory, bit for bit.
    let mut resumed = RmsProp::<f32>::from_state(shapes, &std::fs::read(&path)?, None)?;
    let mut model2 = saved_model;
    let resumed_loss = train(&mut resumed, &mut model2, &xs, &ys, half..EPOCHS, false)?;
    let same = model
        .iter()
        .zip(&model2)
        .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    println!(
        "resumed from the file: final loss {resumed_loss:.5}, parameters bit-identical: {same}"
    );
    std::fs::remove_file(&path)?;
    if !same {
        return Err("resumed training diverged".into());
    }
    Ok(())
}
