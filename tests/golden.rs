//! The golden sets copied into `tests/golden/` (PyTorch 2.15; optax 0.2.8 and Keras 3.15.1;
//! PyTorch 2.15 with 16-bit gradients, a real GradScaler and a 16-bit copy) on every backend,
//! serial and parallel, with the comparison rules of `tests/golden/README.md`.

use rmsprop_simd_support::backends as support;

use rmsprop_simd::BackendKind;
use rmsprop_simd_support::golden::{run_case_any, GoldenSet};
use std::path::PathBuf;
use support::{backend_or_skip, kernels_for};

/// Each copied set and its number of cases.
const SETS: [(&str, usize); 3] = [
    ("torch-2.15", 40),
    ("optax-0.2.8-keras-3.15", 20),
    ("torch-2.15-mixed", 7),
];

fn golden_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check_backend(kind: BackendKind, test: &str) {
    for (name, count) in SETS {
        check_set(kind, test, name, count);
    }
}

fn check_set(kind: BackendKind, test: &str, name: &str, count: usize) {
    let Some(backend) = backend_or_skip(kind, test) else {
        return;
    };
    let set = GoldenSet::load(&golden_dir(name)).unwrap_or_else(|e| panic!("golden set: {e}"));
    assert_eq!(
        set.cases.len(),
        count,
        "the copied set {name} has {count} cases"
    );
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    for kernel in kernels_for(backend) {
        for case in &set.cases {
            let reports =
                run_case_any(case, &kernel).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert!(
                reports.len() >= 2,
                "{}: params and square_avg are always compared",
                case.name
            );
            for r in reports {
                worst = worst.max(r.error / case.tolerance);
                if !r.pass {
                    failures.push(format!(
                        "{} {:?} {} {}: relative error {:.3e} > {:.0e}",
                        kind,
                        kernel.threading(),
                        case.name,
                        r.array,
                        r.error,
                        case.tolerance
                    ));
                }
            }
        }
    }
    eprintln!(
        "{test}: {name}: {} cases x serial/parallel, worst error {:.3} x tolerance",
        set.cases.len(),
        worst
    );
    assert!(
        failures.is_empty(),
        "golden failures:\n{}",
        failures.join("\n")
    );
}

#[test]
#[cfg_attr(miri, ignore = "file I/O and 1.6M element-steps: too slow under miri")]
fn golden_scalar() {
    check_backend(BackendKind::Scalar, "golden_scalar");
}

#[test]
#[cfg_attr(miri, ignore = "file I/O and 1.6M element-steps: too slow under miri")]
fn golden_avx2_fma() {
    check_backend(BackendKind::Avx2Fma, "golden_avx2_fma");
}

#[test]
#[cfg_attr(miri, ignore = "file I/O and 1.6M element-steps: too slow under miri")]
fn golden_avx512() {
    check_backend(BackendKind::Avx512, "golden_avx512");
}

#[test]
#[cfg_attr(miri, ignore = "file I/O and 1.6M element-steps: too slow under miri")]
fn golden_neon() {
    check_backend(BackendKind::Neon, "golden_neon");
}

/// The rule rejects what it should: a perturbed result, and NaN where a finite value is expected.
#[test]
fn comparison_rule_rejects_wrong_results() {
    use rmsprop_simd_support::golden::relative_error;
    let start = [1.0f32, 2.0, 3.0];
    let expected = [0.9f32, 2.1, 3.0];
    assert_eq!(relative_error(&expected, &expected, &start, 1e-38), 0.0);
    let off = [0.9f32, 2.1 + 1e-3, 3.0];
    assert!(relative_error(&off, &expected, &start, 1e-38) > 1e-5);
    let nan = [f32::NAN, 2.1, 3.0];
    assert_eq!(
        relative_error(&nan, &expected, &start, 1e-38),
        f64::INFINITY
    );
    let inf = [0.9f32, 2.1, f32::INFINITY];
    assert_eq!(
        relative_error(&inf, &expected, &start, 1e-38),
        f64::INFINITY
    );
}

/// The semantics matter: eps inside the sqrt (a classic mistake) fails the golden set.
#[test]
#[cfg_attr(miri, ignore = "file I/O and 1.6M element-steps: too slow under miri")]
fn golden_set_detects_wrong_semantics() {
    let set = GoldenSet::load(&golden_dir("torch-2.15")).unwrap();
    let case = set
        .cases
        .iter()
        .find(|c| c.name == "f32_wd0_c0_m0_max0")
        .unwrap();
    let mut wrong = case.clone();
    wrong.hp.alpha = 0.9; // a different trajectory must not pass
    let reports = run_case_any(&wrong, &rmsprop_simd::Kernel::new()).unwrap();
    assert!(reports.iter().any(|r| !r.pass), "{reports:?}");
}
