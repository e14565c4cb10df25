//! Why stochastic rounding exists: bf16 training at a small learning rate.
//!
//! A least-squares problem (`loss = |X w - y|^2 / (2 n)`, 64 weights, 256 samples, the optimum
//! known) is trained with RMSprop at `lr = 1e-3` from weights near 1, where a bf16 ulp is 2^-7
//! (half an ulp 0.0039) and an RMSprop update is about `lr`. Three runs from the same start:
//!
//! - **f32**: params, gradients and state in f32 (the reference trajectory);
//! - **bf16, nearest-even**: params, gradients and state stored in bf16, every result rounded to
//!   nearest: each update is under half an ulp, so the weights never move and the loss stalls;
//! - **bf16, stochastic**: the same storage, params and state rounded stochastically
//!   ([`Rounding::Stochastic`], seeded by the step number): the expected update is kept, and the
//!   loss tracks the f32 run.
//!
//! ```text
//! cargo run --release --example bf16_training                 # table + docs/bf16_training.svg
//! cargo run --release --example bf16_training -- --svg PATH   # the plot elsewhere
//! ```
//!
//! It prints the loss every 100 steps, writes the loss curves as an SVG plot, and exits with an
//! error if the runs do not behave as stated (nearest-even not stalled, stochastic not within
//! reach of f32), so CI checks the claim rather than only running the code.
use half::bf16;
use plotters::prelude::*;
use rmsprop_simd::{Hyperparameters, Kernel, Rounding, State, StepOptions, Threading};
use rmsprop_simd_support::rng::{seeded, unit_f64};

const WEIGHTS: usize = 64;
const SAMPLES: usize = 256;
const STEPS: usize = 1500;
const LR: f64 = 1e-3;

/// The data: `X` (row-major, samples x weights), targets `y = X w*`, and the start.
struct Problem {
    x: Vec<f32>,
    y: Vec<f32>,
    start: Vec<f32>,
    optimum: Vec<f32>,
}

impl Problem {
    fn new() -> Self {
        let mut rng = seeded(2026);
        let mut normal = || {
            // Box-Muller from two uniforms in (0, 1].
            let u1: f64 = 1.0 - unit_f64(&mut rng);
            let u2: f64 = unit_f64(&mut rng);
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        };
        let x: Vec<f32> = (0..SAMPLES * WEIGHTS).map(|_| normal()).collect();
        // The optimum near 1 (bf16 ulp 2^-7 there), the start 0.25 away in each coordinate.
        let optimum: Vec<f32> = (0..WEIGHTS).map(|_| 1.0 + 0.2 * normal()).collect();
        let start: Vec<f32> = optimum
            .iter()
            .enumerate()
            .map(|(i, w)| bf16::from_f32(w + if i % 2 == 0 { 0.25 } else { -0.25 }).to_f32())
            .collect();
        let y = (0..SAMPLES)
            .map(|s| dot(&x[s * WEIGHTS..(s + 1) * WEIGHTS], &optimum))
            .collect();
        Problem {
            x,
            y,
            start,
            optimum,
        }
    }

    /// The loss at `w` and its gradient (f32 arithmetic, as a framework computes it).
    fn loss_and_grad(&self, w: &[f32], grad: &mut [f32]) -> f64 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0f64;
        for s in 0..SAMPLES {
            let row = &self.x[s * WEIGHTS..(s + 1) * WEIGHTS];
            let r = dot(row, w) - self.y[s];
            loss += (r as f64) * (r as f64);
            for (g, &xi) in grad.iter_mut().zip(row) {
                *g += r * xi / SAMPLES as f32;
            }
        }
        loss / (2.0 * SAMPLES as f64)
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One training run; `rounding` `None` is the f32 run. Returns the loss before each step.
fn train(problem: &Problem, rounding: Option<Rounding>) -> Vec<f64> {
    let kernel = Kernel::new().with_threading(Threading::Serial);
    let hp = Hyperparameters {
        lr: LR,
        ..Hyperparameters::default()
    };
    let mut grad = vec![0.0f32; WEIGHTS];
    let mut losses = Vec::with_capacity(STEPS + 1);
    match rounding {
        None => {
            let mut w = problem.start.clone();
            let mut v = vec![0.0f32; WEIGHTS];
            for _ in 0..STEPS {
                losses.push(problem.loss_and_grad(&w, &mut grad));
                kernel
                    .step(&hp, &mut w, &grad, State::new(&mut v))
                    .expect("valid step");
            }
            losses.push(problem.loss_and_grad(&w, &mut grad));
        }
        Some(rounding) => {
            let mut w: Vec<bf16> = problem.start.iter().map(|&x| bf16::from_f32(x)).collect();
            let mut v = vec![bf16::ZERO; WEIGHTS];
            let mut w32 = vec![0.0f32; WEIGHTS];
            for step in 0..STEPS as u64 {
                w32.iter_mut().zip(&w).for_each(|(a, b)| *a = b.to_f32());
                losses.push(problem.loss_and_grad(&w32, &mut grad));
                let g16: Vec<bf16> = grad.iter().map(|&g| bf16::from_f32(g)).collect();
                let options = StepOptions {
                    rounding: match rounding {
                        Rounding::Stochastic { seed, .. } => Rounding::Stochastic { seed, step },
                        r => r,
                    },
                    ..StepOptions::default()
                };
                kernel
                    .step_with(&hp, &options, &mut w, &g16, State::new(&mut v), None)
                    .expect("valid step");
            }
            w32.iter_mut().zip(&w).for_each(|(a, b)| *a = b.to_f32());
            losses.push(problem.loss_and_grad(&w32, &mut grad));
        }
    }
    losses
}

fn plot(curves: &[(&str, &[f64])], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = curves.iter().flat_map(|(_, c)| c.iter().copied());
    let (lo, hi) = all.fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("bf16 RMSprop, lr = {LR}: loss per step (least squares, {WEIGHTS} weights)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0..STEPS, (lo * 0.5..hi * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (log scale)")
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()?;
    let styles = [
        BLACK.stroke_width(3),
        RED.stroke_width(2),
        BLUE.stroke_width(2),
    ];
    for ((name, curve), style) in curves.iter().zip(styles) {
        chart
            .draw_series(LineSeries::new(curve.iter().copied().enumerate(), style))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let svg = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "docs/bf16_training.svg".to_string());
    let problem = Problem::new();
    let f32_run = train(&problem, None);
    let nearest = train(&problem, Some(Rounding::NearestEven));
    let stochastic = train(&problem, Some(Rounding::Stochastic { seed: 7, step: 0 }));
    println!("bf16 training, lr = {LR}, {WEIGHTS} weights, {SAMPLES} samples: loss");
    println!(
        "{:>6} {:>12} {:>18} {:>18}",
        "step", "f32", "bf16 nearest-even", "bf16 stochastic"
    );
    for s in (0..=STEPS).step_by(100) {
        println!(
            "{s:>6} {:>12.4e} {:>18.4e} {:>18.4e}",
            f32_run[s], nearest[s], stochastic[s]
        );
    }
    plot(
        &[
            ("f32 params and state", &f32_run),
            ("bf16, nearest-even rounding", &nearest),
            ("bf16, stochastic rounding", &stochastic),
        ],
        &svg,
    )?;
    println!("plot: {svg}");
    // The floor of bf16 storage: the loss at the optimum rounded to bf16.
    let rounded: Vec<f32> = problem
        .optimum
        .iter()
        .map(|&w| bf16::from_f32(w).to_f32())
        .collect();
    let floor = problem.loss_and_grad(&rounded, &mut vec![0.0; WEIGHTS]);
    println!("bf16 floor (loss at the optimum rounded to bf16): {floor:.4e}");
    // The claims, checked: nearest-even stalls (its weights stop moving: the loss of the last
    // half is constant, far above the others), stochastic rounding follows f32 while the loss
    // falls (within 2x at steps 100 and 200) and ends near the bf16 floor (within 10x).
    let end = STEPS;
    let stalled = nearest[end / 2..].iter().all(|&l| l == nearest[end])
        && nearest[end] > 100.0 * stochastic[end];
    let tracks = [100, 200]
        .iter()
        .all(|&s| stochastic[s] <= 2.0 * f32_run[s] && f32_run[s] <= 2.0 * stochastic[s])
        && stochastic[end] <= 10.0 * floor;
    println!(
        "nearest-even stalled: {stalled} (loss {:.4e} from step {} on); stochastic tracks f32: \
         {tracks} (final {:.4e}, {:.1}x the bf16 floor)",
        nearest[end],
        nearest
            .iter()
            .position(|&l| l == nearest[end])
            .unwrap_or(end),
        stochastic[end],
        stochastic[end] / floor
    );
    if !(stalled && tracks) {
        return Err("the runs did not behave as this example states".into());
    }
    Ok(())
}
