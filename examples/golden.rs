//! Runs every case of a golden directory (the format of `tests/golden/README.md`) on every
//! available backend, serial and parallel, and prints one line per case and a summary.
//!
//! ```text
//! cargo run --release --example golden -- tests/golden/torch-2.15 [--backend scalar|avx2-fma|avx512|neon]
//! ```
//! Exits 1 if any case fails, 2 if the directory is malformed or the arguments are wrong.

use rmsprop_simd::{Backend, BackendKind, Kernel, Threading};
use rmsprop_simd_support::golden::{self, run_case_any, GoldenSet};
use std::process::ExitCode;

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    eprintln!("usage: golden DIR [--backend scalar|avx2-fma|avx512|neon]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut dir, mut only) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" => {
                let Some(name) = it.next() else {
                    return usage("--backend needs a name");
                };
                let Some(kind) = BackendKind::ALL.into_iter().find(|k| k.name() == name) else {
                    return usage(&format!("unknown backend {name:?}"));
                };
                let Some(backend) = Backend::from_kind(kind) else {
                    return usage(&format!("backend {kind} is not supported on this machine"));
                };
                only = Some(backend);
            }
            _ if dir.is_none() => dir = Some(arg.clone()),
            _ => return usage(&format!("unexpected argument {arg:?}")),
        }
    }
    let Some(dir) = dir else {
        return usage("no directory given");
    };
    let set = match GoldenSet::load(std::path::Path::new(&dir)) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("error: malformed golden directory {dir}: {e}");
            return ExitCode::from(2);
        }
    };
    let backends: Vec<Backend> = match only {
        Some(b) => vec![b],
        None => Backend::available().collect(),
    };
    let names: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    println!(
        "{}: {} cases; backends {}; serial and parallel",
        dir,
        set.cases.len(),
        names.join(", ")
    );
    let (mut passed, mut failed) = (0usize, 0usize);
    for backend in &backends {
        for threading in [Threading::Serial, Threading::Parallel] {
            // a small threshold, so that even short cases are split into chunks
            let kernel = Kernel::new()
                .with_backend(*backend)
                .with_threading(threading)
                .with_parallel_min_len(128);
            for case in &set.cases {
                let label = format!(
                    "{:<28} {} n={:<7} steps={:<4} {:<8} {:<8}",
                    case.name,
                    match case.dtype {
                        golden::Dtype::F32 => "f32",
                        golden::Dtype::F64 => "f64",
                    },
                    case.n,
                    case.steps,
                    backend.to_string(),
                    format!("{threading:?}").to_lowercase()
                );
                match run_case_any(case, &kernel) {
                    Ok(reports) => {
                        let ok = reports.iter().all(|r| r.pass);
                        let detail: Vec<String> = reports
                            .iter()
                            .map(|r| format!("{}={:.2e}", r.array, r.error))
                            .collect();
                        println!(
                            "{label} {} {}",
                            detail.join(" "),
                            if ok { "PASS" } else { "FAIL" }
                        );
                        if ok {
                            passed += 1
                        } else {
                            failed += 1
                        }
                    }
                    Err(e) => {
                        println!("{label} error: {e} FAIL");
                        failed += 1;
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
