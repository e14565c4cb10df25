//! Roofline report: the fused kernel against this machine's limits, measured in one run.
//!
//! For each element type, variant, size and thread count it measures
//! - the kernel (auto-dispatched backend, as users get it),
//! - the memory bandwidth of the same access pattern (the same arrays read, the same arrays
//!   written in place, one fma per element: no sqrt/div), and
//! - beside each row, the in-cache divider-bound ceiling: `a / (sqrt(b) + eps)` over L1-resident
//!   arrays (one sqrt and one div per element, like the kernel), per core,
//!
//! all on the kernel's own instruction set and timed in interleaved rounds, so that the kernel
//! and its limits see the same conditions on a shared machine. It prints the kernel as a
//! percentage of the roofline `min(bandwidth, divider ceiling x threads)`. It also times a
//! multi-pass baseline shaped like `torch.optim.RMSprop`'s foreach path (one pass per tensor op,
//! with a freshly allocated temporary, as PyTorch allocates `avg`), and writes an SVG plot of
//! throughput against size.
//!
//! ```text
//! cargo run --release --example roofline                   # full table, plot in target/roofline/
//! cargo run --release --example roofline -- --quick        # fewer sizes
//! cargo run --release --example roofline -- --threshold    # only the parallel-threshold section
//! cargo run --release --example roofline -- --sizes 3e4,3e7 --variants optax,keras  # a subset
//! cargo run --release --example roofline -- --svg out.svg  # plot elsewhere (docs/roofline.svg)
//! cargo run --release --example roofline -- --mixed        # only the 16-bit storage section
//! ```
//!
//! The mixed-precision section (`--mixed`, also part of the full run) compares, at 3e4 (in L2)
//! and 3e7 elements on 1 and all threads: the f32 kernel, all-bf16 storage (nearest-even and
//! stochastic rounding), f32 master weights with bf16 gradients and a fused bf16 copy, and the
//! unfused pipeline that does the same in three passes (convert the gradients, f32 step, convert
//! the parameters); each against a bandwidth probe with its own bytes per element and against the
//! divider ceiling. That ceiling is the instructions' (`vsqrtps` + `vdivps` per element): on
//! AVX-512 (the 16-bit passes' default backend; the f32 kernel's when forced) the square root is
//! computed without the divider (`src/sqrt.rs`, the same bits), so those passes can exceed it;
//! their own divider bound (one `vdivps` per element) is about twice as high.

use plotters::prelude::*;
use pulp::{Simd, WithSimd};
use rmsprop_simd::{
    bf16, BackendKind, Element, Hyperparameters, Kernel, ParamsCopy, Rounding, State, StepOptions,
    Threading,
};
use rmsprop_simd_support::timing;

// ---------------------------------------------------------------- timing

/// Timed rounds per measurement: more rounds, more chances of a quiet moment on a shared VM.
const ROUNDS: usize = 15;

/// [`timing::seconds_per_call_each`] with this report's number of rounds.
fn seconds_per_call_each<D, const N: usize>(
    data: &mut D,
    reset: impl Fn(&mut D),
    fs: [&dyn Fn(&mut D); N],
) -> [f64; N] {
    timing::seconds_per_call_each(ROUNDS, data, reset, fs)
}

/// Runs a pulp operation on the instruction set of `backend`, so the probes use the vectors the
/// kernel uses (on the development VM, an Intel Xeon, AVX-512 division is no faster per element
/// than AVX2's: a probe on `pulp::Arch`'s first choice would misstate the kernel's ceiling).
fn on_backend<Op: WithSimd>(backend: BackendKind, op: Op) -> Op::Output {
    match backend {
        #[cfg(target_arch = "x86_64")]
        BackendKind::Avx2Fma => Simd::vectorize(pulp::x86::V3::try_new().expect("AVX2+FMA"), op),
        #[cfg(target_arch = "x86_64")]
        BackendKind::Avx512 => Simd::vectorize(pulp::x86::V4::try_new().expect("AVX-512"), op),
        #[cfg(target_arch = "aarch64")]
        BackendKind::Neon => Simd::vectorize(pulp::aarch64::Neon::try_new().expect("NEON"), op),
        _ => Simd::vectorize(pulp::Scalar::new(), op),
    }
}

// ---------------------------------------------------------------- workloads

use rmsprop_simd_support::workloads::{fill, traffic, variants};

struct Buffers<T> {
    grads: Vec<T>,
    /// params, square_avg, grad_avg, momentum_buffer: the arrays updated in place.
    in_place: Vec<Vec<T>>,
    /// The starting values of `in_place`, restored before each timed batch.
    pristine: Vec<Vec<T>>,
}

impl<T: Element> Buffers<T> {
    fn new(len: usize, written: usize) -> Self {
        let in_place: Vec<Vec<T>> = (0..written).map(|k| fill(len, k)).collect();
        Buffers {
            grads: fill(len, 99),
            pristine: in_place.clone(),
            in_place,
        }
    }

    fn reset(&mut self) {
        for (x, p) in self.in_place.iter_mut().zip(&self.pristine) {
            x.copy_from_slice(p);
        }
    }

    fn kernel_step(&mut self, kernel: &Kernel, hp: &Hyperparameters) {
        let (centered, momentum) = hp.uses_state();
        let [params, rest @ ..] = &mut self.in_place[..] else {
            unreachable!()
        };
        let [square_avg, rest @ ..] = rest else {
            unreachable!()
        };
        let mut state = State::new(&mut square_avg[..]);
        let mut rest = rest.iter_mut();
        if centered {
            state = state.with_grad_avg(rest.next().unwrap());
        }
        if momentum {
            state = state.with_momentum_buffer(rest.next().unwrap());
        }
        kernel
            .step(hp, params, &self.grads, state)
            .expect("valid input");
    }
}

/// The bandwidth probe: every in-place array `x = fma(g, 0, x)`, reading `grads` once. Same
/// arrays, same reads and writes as the kernel, negligible arithmetic.
struct Stream<'a, T> {
    grads: &'a [T],
    in_place: Vec<&'a mut [T]>,
}

impl<T: Element + PulpFloat> WithSimd for Stream<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let zero = T::v_splat(simd, T::from_f64(0.0));
        let (g_head, g_tail) = T::v_as_simd::<S>(self.grads);
        let mut heads = Vec::new();
        let mut tails = Vec::new();
        for x in self.in_place {
            let (h, t) = T::v_as_mut_simd::<S>(x);
            heads.push(h);
            tails.push(t);
        }
        // Unrolled over the number of arrays so the loop body has no inner loop.
        macro_rules! pass {
            ($($h:ident),*) => {{
                let [$($h),*] = &mut heads[..] else { unreachable!() };
                for (i, &g) in g_head.iter().enumerate() {
                    // Prefetched as the kernel's passes prefetch (2 KiB ahead of each stream).
                    prefetch(g_head.as_ptr().wrapping_add(i).cast::<u8>().wrapping_add(2048));
                    $(prefetch($h.as_ptr().wrapping_add(i).cast::<u8>().wrapping_add(2048));)*
                    $($h[i] = T::v_fma(simd, g, zero, $h[i]);)*
                }
            }};
        }
        match heads.len() {
            2 => pass!(a, b),
            3 => pass!(a, b, c),
            4 => pass!(a, b, c, d),
            n => unreachable!("{n} arrays"),
        }
        for t in tails {
            for (x, &g) in t.iter_mut().zip(g_tail) {
                *x = *x + g * T::from_f64(0.0);
            }
        }
    }
}

/// The divider probe: `out = a / (sqrt(b) + eps)`, one sqrt and one div per element; with
/// `divs = 2`, `a / (sqrt(b / c) + eps)`; with 3, `(a / c) / (sqrt(b / c) + eps)`: the sqrt and
/// division count of the variant it bounds.
struct Divider<'a, T> {
    a: &'a [T],
    b: &'a [T],
    out: &'a mut [T],
    divs: usize,
}

impl<T: Element + PulpFloat> WithSimd for Divider<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let eps = T::v_splat(simd, T::from_f64(1e-8));
        let c = T::v_splat(simd, T::from_f64(0.9));
        let (a, _) = T::v_as_simd::<S>(self.a);
        let (b, _) = T::v_as_simd::<S>(self.b);
        let (out, _) = T::v_as_mut_simd::<S>(self.out);
        macro_rules! probe {
            (|$a:ident, $b:ident| $e:expr) => {
                for ((o, &$a), &$b) in out.iter_mut().zip(a).zip(b) {
                    *o = $e;
                }
            };
        }
        match self.divs {
            1 => probe!(|a, b| T::v_div(simd, a, T::v_add(simd, T::v_sqrt(simd, b), eps))),
            2 => probe!(|a, b| T::v_div(
                simd,
                a,
                T::v_add(simd, T::v_sqrt(simd, T::v_div(simd, b, c)), eps)
            )),
            _ => probe!(|a, b| T::v_div(
                simd,
                T::v_div(simd, a, c),
                T::v_add(simd, T::v_sqrt(simd, T::v_div(simd, b, c)), eps)
            )),
        }
    }
}

/// The pulp operations the probes need, for f32 and f64.
trait PulpFloat: Sized + Copy {
    type V<S: Simd>: Copy;
    fn v_splat<S: Simd>(s: S, x: Self) -> Self::V<S>;
    fn v_fma<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>, c: Self::V<S>) -> Self::V<S>;
    fn v_add<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
    fn v_div<S: Simd>(s: S, a: Self::V<S>, b: Self::V<S>) -> Self::V<S>;
    fn v_sqrt<S: Simd>(s: S, a: Self::V<S>) -> Self::V<S>;
    fn v_as_simd<S: Simd>(x: &[Self]) -> (&[Self::V<S>], &[Self]);
    fn v_as_mut_simd<S: Simd>(x: &mut [Self]) -> (&mut [Self::V<S>], &mut [Self]);
}

macro_rules! pulp_float {
    ($t:ty, $v:ident, $splat:ident, $fma:ident, $add:ident, $div:ident, $sqrt:ident, $as:ident, $as_mut:ident) => {
        impl PulpFloat for $t {
            type V<S: Simd> = S::$v;
            fn v_splat<S: Simd>(s: S, x: Self) -> S::$v {
                s.$splat(x)
            }
            fn v_fma<S: Simd>(s: S, a: S::$v, b: S::$v, c: S::$v) -> S::$v {
                s.$fma(a, b, c)
            }
            fn v_add<S: Simd>(s: S, a: S::$v, b: S::$v) -> S::$v {
                s.$add(a, b)
            }
            fn v_div<S: Simd>(s: S, a: S::$v, b: S::$v) -> S::$v {
                s.$div(a, b)
            }
            fn v_sqrt<S: Simd>(s: S, a: S::$v) -> S::$v {
                s.$sqrt(a)
            }
            fn v_as_simd<S: Simd>(x: &[Self]) -> (&[S::$v], &[Self]) {
                S::$as(x)
            }
            fn v_as_mut_simd<S: Simd>(x: &mut [Self]) -> (&mut [S::$v], &mut [Self]) {
                S::$as_mut(x)
            }
        }
    };
}
pulp_float!(
    f32,
    f32s,
    splat_f32s,
    mul_add_f32s,
    add_f32s,
    div_f32s,
    sqrt_f32s,
    as_simd_f32s,
    as_mut_simd_f32s
);
pulp_float!(
    f64,
    f64s,
    splat_f64s,
    mul_add_f64s,
    add_f64s,
    div_f64s,
    sqrt_f64s,
    as_simd_f64s,
    as_mut_simd_f64s
);

/// One pass of the bandwidth probe over `bufs` on `backend`: on the calling thread when
/// `threads == 1`, else split into `threads` equal contiguous parts on the current rayon pool.
fn bandwidth_probe<T: Element + PulpFloat>(
    backend: BackendKind,
    bufs: &mut Buffers<T>,
    threads: usize,
) {
    let len = bufs.grads.len();
    let Buffers {
        grads, in_place, ..
    } = bufs;
    if threads == 1 {
        let arrays = in_place.iter_mut().map(|v| &mut v[..]).collect();
        return on_backend(
            backend,
            Stream {
                grads,
                in_place: arrays,
            },
        );
    }
    let part = len.div_ceil(threads).next_multiple_of(512);
    let mut per_thread: Vec<Vec<&mut [T]>> = (0..threads).map(|_| Vec::new()).collect();
    for v in in_place.iter_mut() {
        for (t, chunk) in v.chunks_mut(part).enumerate() {
            per_thread[t].push(chunk);
        }
    }
    rayon::scope(|s| {
        for (arrays, g) in per_thread.into_iter().zip(grads.chunks(part)) {
            s.spawn(move |_| {
                on_backend(
                    backend,
                    Stream {
                        grads: g,
                        in_place: arrays,
                    },
                )
            });
        }
    });
}

/// The divider probe's data: `a / (sqrt(b) + eps)` over L1-resident arrays of `DIVIDER_LEN`.
struct DividerData<T> {
    a: Vec<T>,
    b: Vec<T>,
    out: std::sync::Mutex<Vec<T>>,
}

const DIVIDER_LEN: usize = 2048;

impl<T: Element + PulpFloat> DividerData<T> {
    fn new() -> Self {
        DividerData {
            // the kernel's operands: gradients and square averages in (5e-5, 0.1)
            a: fill(DIVIDER_LEN, 99),
            b: fill(DIVIDER_LEN, 1),
            out: std::sync::Mutex::new(vec![T::from_f64(0.0); DIVIDER_LEN]),
        }
    }

    /// One pass of the divider probe with `divs` divisions per element on `backend`, on the
    /// calling thread.
    fn run(&self, backend: BackendKind, divs: usize) {
        let out = &mut self.out.lock().unwrap()[..];
        on_backend(
            backend,
            Divider {
                a: &self.a,
                b: &self.b,
                out,
                divs,
            },
        )
    }
}

use rmsprop_simd_support::multipass;

fn multi_pass_plain<T: Element>(hp: &Hyperparameters, bufs: &mut Buffers<T>) {
    let [params, square_avg] = &mut bufs.in_place[..] else {
        unreachable!()
    };
    multipass::multi_pass_plain(hp, params, &bufs.grads, square_avg);
}

// ---------------------------------------------------------------- report

struct Row {
    dtype: &'static str,
    variant: &'static str,
    len: usize,
    threads: usize,
    kernel_gbs: f64,
    bandwidth_gbs: f64,
    divider_gbs: f64,
}

impl Row {
    fn roofline(&self) -> f64 {
        self.bandwidth_gbs.min(self.divider_gbs)
    }
}

fn measure<T: Element + PulpFloat>(
    only: &Option<Vec<String>>,
    sizes: &[usize],
    thread_counts: &[usize],
    rows: &mut Vec<Row>,
    baseline: &mut Vec<(String, usize, f64, f64)>,
) {
    let backend = Kernel::new().backend().kind();
    let divider_data = DividerData::<T>::new();
    let mut dividers = Vec::new();
    let size = std::mem::size_of::<T>();
    println!(
        "\n{}: the divider-bound ceiling (one sqrt + one div per element, L1-resident, per core x \
         threads) is measured beside each row",
        T::NAME
    );
    println!(
        "{:<4} {:<13} {:>10} {:>3} | {:>9} {:>9} {:>6} | {:>9} {:>6} | {:>6}",
        "type",
        "variant",
        "elements",
        "thr",
        "kern GB/s",
        "bw GB/s",
        "% bw",
        "div GB/s",
        "% div",
        "% roof"
    );
    for variant in variants() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == variant.name))
        {
            continue;
        }
        let (read, written) = traffic(&variant.hp);
        let bytes = ((read + written) * size) as f64;
        for &len in sizes {
            let mut bufs = Buffers::<T>::new(len, written);
            for &threads in thread_counts {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let threading = if threads == 1 {
                    Threading::Serial
                } else {
                    Threading::Parallel
                };
                let kernel = Kernel::new().with_threading(threading);
                let step = |b: &mut Buffers<T>| b.kernel_step(&kernel, &variant.hp);
                let probe_1 = |b: &mut Buffers<T>| bandwidth_probe(backend, b, 1);
                let probe_n = |b: &mut Buffers<T>| bandwidth_probe(backend, b, threads);
                let divider = |_: &mut Buffers<T>| divider_data.run(backend, variant.divs);
                // The bandwidth limit for `threads` threads is the better of the probe on one
                // thread and split over all of them: the kernel may do either.
                // The divider probe runs in the same rounds: a busy SMT sibling on this shared VM
                // slows the kernel in cache and the divider alike.
                let (k_secs, bw_secs, div_secs) = pool.install(|| {
                    if threads == 1 {
                        let [k, bw, div] = seconds_per_call_each(
                            &mut bufs,
                            Buffers::reset,
                            [&step, &probe_1, &divider],
                        );
                        (k, bw, div)
                    } else {
                        let [k, bw_1, bw_n, div] = seconds_per_call_each(
                            &mut bufs,
                            Buffers::reset,
                            [&step, &probe_1, &probe_n, &divider],
                        );
                        (k, bw_1.min(bw_n), div)
                    }
                });
                let divider_per_core = DIVIDER_LEN as f64 / div_secs;
                dividers.push(divider_per_core);
                let serial_by_design = threads > 1 && len < kernel.parallel_min_len();
                let row = Row {
                    dtype: T::NAME,
                    variant: variant.name,
                    len,
                    threads,
                    kernel_gbs: len as f64 * bytes / k_secs / 1e9,
                    bandwidth_gbs: len as f64 * bytes / bw_secs / 1e9,
                    divider_gbs: divider_per_core * threads as f64 * bytes / 1e9,
                };
                println!(
                    "{:<4} {:<13} {:>10} {:>3} | {:>9.1} {:>9.1} {:>5.0}% | {:>9.1} {:>5.0}% | {:>5.0}%{}",
                    row.dtype,
                    row.variant,
                    len,
                    threads,
                    row.kernel_gbs,
                    row.bandwidth_gbs,
                    100.0 * row.kernel_gbs / row.bandwidth_gbs,
                    row.divider_gbs,
                    100.0 * row.kernel_gbs / row.divider_gbs,
                    100.0 * row.kernel_gbs / row.roofline(),
                    if serial_by_design {
                        "  (1 thread by design: below PARALLEL_MIN_LEN)"
                    } else {
                        ""
                    }
                );
                if variant.name == "plain" && threads == 1 && len >= 100_000 {
                    let multi_pass = |b: &mut Buffers<T>| multi_pass_plain(&variant.hp, b);
                    let [k, mp] =
                        seconds_per_call_each(&mut bufs, Buffers::reset, [&step, &multi_pass]);
                    baseline.push((T::NAME.to_string(), len, len as f64 / k, len as f64 / mp));
                }
                rows.push(row);
            }
        }
    }
    dividers.sort_by(f64::total_cmp);
    println!(
        "{} divider-bound ceiling over these rows: min {:.2}, median {:.2}, max {:.2} Gelem/s per core",
        T::NAME,
        dividers[0] / 1e9,
        dividers[dividers.len() / 2] / 1e9,
        dividers[dividers.len() - 1] / 1e9
    );
}

fn plot(rows: &[Row], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let pick = |dtype: &str, variant: &str, threads: usize| {
        rows.iter()
            .filter(|r| r.dtype == dtype && r.variant == variant && r.threads == threads)
            .map(|r| (r.len as f64, r))
            .collect::<Vec<_>>()
    };
    let max_len = rows.iter().map(|r| r.len).max().unwrap_or(1) as f64;
    let min_len = rows.iter().map(|r| r.len).min().unwrap_or(1) as f64;
    let ymax = rows
        .iter()
        .filter(|r| r.variant == "plain" && r.dtype == "f32")
        .map(|r| r.kernel_gbs.max(r.roofline()))
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "rmsprop-simd, f32 plain step: kernel vs roofline (GB/s of minimal traffic)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((min_len..max_len).log_scale(), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("elements per buffer")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_desc("GB/s (20 bytes per element)")
        .draw()?;
    // Where Threading::Parallel starts splitting: below it every thread count runs on one thread.
    let threshold = rmsprop_simd::PARALLEL_MIN_LEN as f64;
    chart
        .draw_series(DashedLineSeries::new(
            [(threshold, 0.0), (threshold, ymax)],
            3,
            3,
            BLACK.mix(0.5).stroke_width(1),
        ))?
        .label("PARALLEL_MIN_LEN: split into chunks from here on")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    let threads: Vec<usize> = {
        let mut t: Vec<usize> = rows.iter().map(|r| r.threads).collect();
        t.sort();
        t.dedup();
        t
    };
    for (i, &t) in threads.iter().enumerate() {
        let color = Palette99::pick(i * 3).to_rgba();
        let series = pick("f32", "plain", t);
        chart
            .draw_series(LineSeries::new(
                series.iter().map(|(x, r)| (*x, r.kernel_gbs)),
                color.stroke_width(3),
            ))?
            .label(format!("kernel, {t} thread(s)"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        // A multi-thread roofline only where the kernel uses several threads.
        let roofline = series
            .iter()
            .filter(|(_, r)| t == 1 || r.len >= rmsprop_simd::PARALLEL_MIN_LEN)
            .map(|(x, r)| (*x, r.roofline()));
        chart
            .draw_series(DashedLineSeries::new(roofline, 6, 4, color.stroke_width(1)))?
            .label(format!("roofline min(bandwidth, divider), {t} thread(s)"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
            });
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let svg = args
        .iter()
        .position(|a| a == "--svg")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/roofline/roofline.svg".to_string());
    if args.iter().any(|a| a == "--threshold") {
        parallel_threshold();
        return;
    }
    if args.iter().any(|a| a == "--mixed") {
        mixed_precision();
        return;
    }
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let only: Option<Vec<String>> =
        arg("--variants").map(|v| v.split(',').map(str::to_string).collect());
    let explicit_sizes: Option<Vec<usize>> = arg("--sizes").map(|v| {
        v.split(',')
            .map(|x| {
                x.parse::<f64>()
                    .expect("--sizes takes numbers like 3e4,3e7") as usize
            })
            .collect()
    });
    let sizes: Vec<usize> = if let Some(s) = explicit_sizes {
        s
    } else if quick {
        vec![1_000, 30_000, 1_000_000, 10_000_000]
    } else {
        vec![
            1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000,
            30_000_000,
        ]
    };
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let thread_counts: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    println!(
        "roofline: backend {} (portable build: {}), threads {:?}, {} cores",
        Kernel::new().backend(),
        if cfg!(target_feature = "avx2") {
            "no, built with AVX2 enabled"
        } else {
            "yes"
        },
        thread_counts,
        all
    );
    println!("GB/s counts the minimal traffic: each input read once, each output written once.");
    let mut rows = Vec::new();
    let mut baseline = Vec::new();
    measure::<f32>(&only, &sizes, &thread_counts, &mut rows, &mut baseline);
    measure::<f64>(&only, &sizes, &thread_counts, &mut rows, &mut baseline);

    println!("\nfused vs multi-pass baseline (plain, 1 thread; foreach-shaped, fresh temporary):");
    for (dtype, len, fused, multi) in &baseline {
        println!(
            "  {dtype} {len:>10}: fused {:.2} Gelem/s, multi-pass {:.2} Gelem/s, {:.1}x",
            fused / 1e9,
            multi / 1e9,
            fused / multi
        );
    }

    println!("\nparallel vs serial (kernel GB/s ratio, all threads / 1 thread):");
    for r in rows.iter().filter(|r| r.threads > 1) {
        if let Some(s) = rows.iter().find(|s| {
            s.threads == 1 && s.dtype == r.dtype && s.variant == r.variant && s.len == r.len
        }) {
            if r.variant == "plain" {
                println!(
                    "  {} {:>10}: {:.2}x",
                    r.dtype,
                    r.len,
                    r.kernel_gbs / s.kernel_gbs
                );
            }
        }
    }

    parallel_threshold();
    mixed_precision();

    if let Some(dir) = std::path::Path::new(&svg).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match plot(&rows, &svg) {
        Ok(()) => println!("\nplot written to {svg}"),
        Err(e) => {
            eprintln!("error: cannot write the plot {svg}: {e}");
            std::process::exit(1);
        }
    }
}

/// Where splitting starts to pay: serial vs the same buffer forced into two parallel tasks.
fn parallel_threshold() {
    println!("\nparallel threshold (f32 plain; serial vs forced 2-chunk split, Gelem/s):");
    for len in [
        16_384usize,
        32_768,
        65_536,
        98_304,
        131_072,
        196_608,
        262_144,
    ] {
        let mut bufs = Buffers::<f32>::new(len, 2);
        let hp = Hyperparameters::default();
        let serial = Kernel::new().with_threading(Threading::Serial);
        let split = Kernel::new()
            .with_threading(Threading::Parallel)
            .with_parallel_min_len(len);
        let [s, p] = seconds_per_call_each(
            &mut bufs,
            Buffers::reset,
            [&|b| b.kernel_step(&serial, &hp), &|b| {
                b.kernel_step(&split, &hp)
            }],
        );
        println!(
            "  {len:>7}: serial {:.2}, split {:.2} ({:.2}x){}",
            len as f64 / s / 1e9,
            len as f64 / p / 1e9,
            s / p,
            if len >= rmsprop_simd::PARALLEL_MIN_LEN {
                "  <- split by default"
            } else {
                ""
            }
        );
    }
}

// ---------------------------------------------------------------- mixed precision

/// One mixed-precision configuration's buffers: parameters, gradients, square_avg and an optional
/// copy, each in its storage type, plus the f32 scratch of the unfused pipeline.
struct MixedBufs {
    p32: Vec<f32>,
    p16: Vec<bf16>,
    g32: Vec<f32>,
    g16: Vec<bf16>,
    v32: Vec<f32>,
    v16: Vec<bf16>,
    copy: Vec<bf16>,
    scratch: Vec<f32>,
    pristine: (Vec<f32>, Vec<bf16>, Vec<f32>, Vec<bf16>),
}

impl MixedBufs {
    fn new(len: usize) -> Self {
        let p32: Vec<f32> = fill(len, 0);
        let v32: Vec<f32> = fill(len, 1);
        let g32: Vec<f32> = fill(len, 99);
        let p16: Vec<bf16> = p32.iter().map(|&x| bf16::from_f32(x)).collect();
        let v16: Vec<bf16> = v32.iter().map(|&x| bf16::from_f32(x)).collect();
        MixedBufs {
            g16: g32.iter().map(|&x| bf16::from_f32(x)).collect(),
            copy: p16.clone(),
            scratch: vec![0.0; len],
            pristine: (p32.clone(), p16.clone(), v32.clone(), v16.clone()),
            p32,
            p16,
            g32,
            v32,
            v16,
        }
    }

    fn reset(&mut self) {
        self.p32.copy_from_slice(&self.pristine.0);
        self.p16.copy_from_slice(&self.pristine.1);
        self.v32.copy_from_slice(&self.pristine.2);
        self.v16.copy_from_slice(&self.pristine.3);
    }
}

/// The bandwidth probe of a byte pattern: `read` arrays read once, `rw` arrays read and written in
/// place, `write` arrays written, `len` elements of the given sizes, streamed together in blocks
/// of 512 elements (plain loops the compiler vectorises; a memory-bound stream needs no more).
fn byte_stream(read: &[&[u8]], rw: &mut [&mut [u8]], write: &mut [&mut [u8]], len: usize) {
    const BLOCK: usize = 512;
    // Bytes per block of each array, computed once (a division per array and block cost more
    // than the memory traffic it was to measure).
    let width = |bytes: usize| bytes / len.max(1) * BLOCK;
    let rws: Vec<usize> = rw.iter().map(|x| width(x.len())).collect();
    let ws: Vec<usize> = write.iter().map(|x| width(x.len())).collect();
    let rs: Vec<usize> = read.iter().map(|x| width(x.len())).collect();
    let mut acc = 0u8;
    for b in 0..len / BLOCK {
        // Every array's block after next prefetched, as the kernel's passes do (`prefetch`).
        let ahead = |s: &[u8], w: usize| {
            for line in (0..w).step_by(64) {
                prefetch(s.as_ptr().wrapping_add((b + 2) * w + line));
            }
        };
        read.iter().zip(&rs).for_each(|(r, &w)| ahead(r, w));
        rw.iter().zip(&rws).for_each(|(x, &w)| ahead(x, w));
        write.iter().zip(&ws).for_each(|(x, &w)| ahead(x, w));
        for (r, &w) in read.iter().zip(&rs) {
            acc ^= r[b * w..(b + 1) * w].iter().fold(0u8, |a, &x| a ^ x);
        }
        // `acc == 1` is data-dependent, so the reads cannot be dropped; it is almost never true.
        let flip = (acc == 1) as u8;
        for (x, &w) in rw.iter_mut().zip(&rws) {
            for y in &mut x[b * w..(b + 1) * w] {
                *y ^= flip;
            }
        }
        for (x, &w) in write.iter_mut().zip(&ws) {
            x[b * w..(b + 1) * w].fill(flip);
        }
    }
}

/// A hint to bring the cache line at `p` into the cache (x86-64; elsewhere nothing).
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no architectural state; any address will do.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`byte_stream`] on `threads` threads (equal contiguous parts).
fn byte_stream_on(
    threads: usize,
    read: &[&[u8]],
    rw: &mut [&mut [u8]],
    write: &mut [&mut [u8]],
    len: usize,
) {
    if threads == 1 {
        return byte_stream(read, rw, write, len);
    }
    let part = len.div_ceil(threads).next_multiple_of(512);
    let cut = |bytes: usize| bytes / len * part;
    let mut reads: Vec<Vec<&[u8]>> = (0..threads).map(|_| Vec::new()).collect();
    for r in read {
        for (t, c) in r.chunks(cut(r.len())).enumerate() {
            reads[t].push(c);
        }
    }
    let mut rws: Vec<Vec<&mut [u8]>> = (0..threads).map(|_| Vec::new()).collect();
    for x in rw.iter_mut() {
        let c = cut(x.len());
        for (t, ch) in x.chunks_mut(c).enumerate() {
            rws[t].push(ch);
        }
    }
    let mut writes: Vec<Vec<&mut [u8]>> = (0..threads).map(|_| Vec::new()).collect();
    for x in write.iter_mut() {
        let c = cut(x.len());
        for (t, ch) in x.chunks_mut(c).enumerate() {
            writes[t].push(ch);
        }
    }
    rayon::scope(|s| {
        for ((r, mut x), mut w) in reads.into_iter().zip(rws).zip(writes) {
            let n = (part).min(len);
            let n = if r.is_empty() {
                n
            } else {
                r[0].len() * len / read[0].len()
            };
            s.spawn(move |_| byte_stream(&r, &mut x, &mut w, n));
        }
    });
}

fn mixed_precision() {
    use bytemuck::{cast_slice, cast_slice_mut};
    use half::slice::HalfFloatSliceExt;
    let backend = Kernel::new().backend().kind();
    let divider = DividerData::<f32>::new();
    let hp = Hyperparameters::default();
    let all = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let thread_counts: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    println!("\nmixed precision (plain RMSprop, PyTorch semantics; Gelem/s; % of the limit of the row's own bytes/element):");
    println!(
        "{:<30} {:>10} {:>3} {:>4} | {:>7} {:>7} {:>6} | {:>7} {:>6} | {:>6}",
        "configuration",
        "elements",
        "thr",
        "B/el",
        "Gelem/s",
        "bw",
        "% bw",
        "div",
        "% div",
        "% roof"
    );
    let mut summary = Vec::new();
    for len in [30_000usize, 30_000_000] {
        let mut m = MixedBufs::new(len);
        for &threads in &thread_counts {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let kernel = Kernel::new().with_threading(if threads == 1 {
                Threading::Serial
            } else {
                Threading::Parallel
            });
            let plain = StepOptions::default();
            let sr = StepOptions {
                rounding: Rounding::Stochastic { seed: 1, step: 1 },
                ..StepOptions::default()
            };
            let f32_step = |m: &mut MixedBufs| {
                kernel
                    .step(&hp, &mut m.p32, &m.g32, State::new(&mut m.v32))
                    .unwrap()
            };
            let bf16_ne = |m: &mut MixedBufs| {
                kernel
                    .step_with(
                        &hp,
                        &plain,
                        &mut m.p16,
                        &m.g16,
                        State::new(&mut m.v16),
                        None,
                    )
                    .unwrap()
            };
            let bf16_sr = |m: &mut MixedBufs| {
                kernel
                    .step_with(&hp, &sr, &mut m.p16, &m.g16, State::new(&mut m.v16), None)
                    .unwrap()
            };
            let master = |m: &mut MixedBufs| {
                kernel
                    .step_with(
                        &hp,
                        &plain,
                        &mut m.p32,
                        &m.g16,
                        State::new(&mut m.v32),
                        Some(ParamsCopy::from(&mut m.copy[..])),
                    )
                    .unwrap()
            };
            let unfused = |m: &mut MixedBufs| {
                let chunk = len.div_ceil(threads).max(1);
                use rayon::prelude::*;
                m.g16
                    .par_chunks(chunk)
                    .zip(m.scratch.par_chunks_mut(chunk))
                    .for_each(|(a, b)| a.convert_to_f32_slice(b));
                kernel
                    .step(&hp, &mut m.p32, &m.scratch, State::new(&mut m.v32))
                    .unwrap();
                m.copy
                    .par_chunks_mut(chunk)
                    .zip(m.p32.par_chunks(chunk))
                    .for_each(|(a, b)| a.convert_from_f32_slice(b));
            };
            // Bandwidth probes with each configuration's byte pattern.
            let bw_f32 = |m: &mut MixedBufs| {
                byte_stream_on(
                    threads,
                    &[cast_slice(&m.g32)],
                    &mut [cast_slice_mut(&mut m.p32), cast_slice_mut(&mut m.v32)],
                    &mut [],
                    len,
                )
            };
            let bw_bf16 = |m: &mut MixedBufs| {
                byte_stream_on(
                    threads,
                    &[cast_slice(&m.g16)],
                    &mut [cast_slice_mut(&mut m.p16), cast_slice_mut(&mut m.v16)],
                    &mut [],
                    len,
                )
            };
            let bw_master = |m: &mut MixedBufs| {
                byte_stream_on(
                    threads,
                    &[cast_slice(&m.g16)],
                    &mut [cast_slice_mut(&mut m.p32), cast_slice_mut(&mut m.v32)],
                    &mut [cast_slice_mut(&mut m.copy)],
                    len,
                )
            };
            let div = |_: &mut MixedBufs| divider.run(backend, 1);
            let t = pool.install(|| {
                seconds_per_call_each(
                    &mut m,
                    MixedBufs::reset,
                    [
                        &f32_step, &bf16_ne, &bf16_sr, &master, &unfused, &bw_f32, &bw_bf16,
                        &bw_master, &div,
                    ],
                )
            });
            let [t_f32, t_ne, t_sr, t_master, t_unfused, b_f32, b_bf16, b_master, t_div] = t;
            let div_rate = DIVIDER_LEN as f64 / t_div * threads as f64;
            let rate = |secs: f64| len as f64 / secs;
            for (name, secs, bytes, bw_secs) in [
                ("f32 (params, grads, state)", t_f32, 20.0, b_f32),
                ("bf16 all, nearest-even", t_ne, 10.0, b_bf16),
                ("bf16 all, stochastic", t_sr, 10.0, b_bf16),
                ("master f32 + bf16 grads + copy", t_master, 20.0, b_master),
                (
                    "  unfused: convert, step, convert",
                    t_unfused,
                    32.0,
                    b_master,
                ),
            ] {
                // A limit cannot be below what a pass achieved: the bytes per second the f32
                // kernel moved bound the machine's bandwidth from below where the probe reads less.
                let bw = rate(bw_secs).max(20.0 / f64::min(bytes, 20.0) * rate(t_f32));
                let roof = bw.min(div_rate);
                println!(
                    "{:<30} {:>10} {:>3} {:>4} | {:>7.3} {:>7.3} {:>5.0}% | {:>7.3} {:>5.0}% | {:>5.0}%",
                    name,
                    len,
                    threads,
                    bytes,
                    rate(secs) / 1e9,
                    bw / 1e9,
                    100.0 * rate(secs) / bw,
                    div_rate / 1e9,
                    100.0 * rate(secs) / div_rate,
                    100.0 * rate(secs) / roof
                );
            }
            summary.push(format!(
                "  {len:>9} x {threads} thr: bf16/f32 {:.2}x; stochastic/nearest {:.2}; fused master/unfused {:.2}x",
                t_f32 / t_ne,
                t_ne / t_sr,
                t_unfused / t_master
            ));
        }
    }
    println!("(the unfused row's % columns use the fused row's limits: its goal is the fused pass's 20 bytes)");
    println!("(bw: the byte-stream probe of the row's pattern, or the f32 kernel's bytes per second where it moved more)");
    println!("ratios (elements per second, same run):");
    for s in summary {
        println!("{s}");
    }
}
