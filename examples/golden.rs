//! Runs every case of a golden directory (the format of `tests/golden/README.md`) on every
//! available backend, serial and parallel, and prints one line per case and a summary.
//!
//! ```text
//! cargo run --release --example golden -- tests/golden/torch-2.15 [--backend scalar|avx2-fma|avx512|neon]
//! cargo run --release --example golden -- --help
//! ```
//! Exits 1 if any case fails, 2 if the directory is malformed or the arguments are wrong.

use rmsprop_simd::{Backend, BackendKind, Kernel, Threading};
use rmsprop_simd_support::golden::{self, run_case_any, GoldenSet};
use std::process::ExitCode;

const USAGE: &str = "\
Runs every case of a golden directory on every available backend, serial and parallel.

usage: golden [--backend NAME] DIR

arguments:
  DIR              a directory with cases.json (the format of tests/golden/README.md),
                   e.g. tests/golden/torch-2.15

options:
  --backend NAME   only this backend: scalar, avx2-fma, avx512 or neon
  -h, --help       print this help

exit status: 0 all passed, 1 a case failed, 2 bad arguments or a malformed directory";

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

/// The parsed command line: the directory and, optionally, one backend.
fn parse_args() -> Result<Option<(String, Option<Backend>)>, String> {
    use lexopt::prelude::*;
    let (mut dir, mut only) = (None, None);
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("backend") => {
                let name: String = parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .string()
                    .map_err(|e| e.to_string())?;
                let kind = BackendKind::ALL
                    .into_iter()
                    .find(|k| k.name() == name)
                    .ok_or_else(|| format!("unknown backend {name:?}"))?;
                let backend = Backend::from_kind(kind)
                    .ok_or_else(|| format!("backend {kind} is not supported on this machine"))?;
                only = Some(backend);
            }
            Value(value) if dir.is_none() => {
                dir = Some(value.string().map_err(|e| e.to_string())?);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let dir = dir.ok_or("no directory given")?;
    Ok(Some((dir, only)))
}

fn main() -> ExitCode {
    let (dir, only) = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage(&e),
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
