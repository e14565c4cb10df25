//! Test harness shared by the integration tests: which backends to run, and a bitwise comparison
//! of any kernel against the scalar reference on sub-slices of padded buffers.

use rmsprop_simd::{
    reference, Backend, BackendKind, Element, Hyperparameters, Kernel, OptaxOptions, Semantics,
    State, Threading,
};

/// Set (to anything but `0`) in CI: a backend that this CPU supports but the crate did not
/// provide fails the test instead of being skipped.
pub const REQUIRE_ENV: &str = "RMSPROP_SIMD_REQUIRE_BACKENDS";

/// Does the CPU itself (asked directly through std, not through pulp) support `kind`?
pub fn cpu_supports(kind: BackendKind) -> bool {
    match kind {
        BackendKind::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        BackendKind::Avx2Fma => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(target_arch = "x86_64")]
        BackendKind::Avx512 => {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512cd")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
        }
        #[cfg(target_arch = "aarch64")]
        BackendKind::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        _ => false,
    }
}

fn require_all() -> bool {
    std::env::var(REQUIRE_ENV)
        .map(|v| v != "0" && !v.is_empty())
        .unwrap_or(false)
}

/// The backend of `kind` if this machine runs it. Otherwise prints that the test skips it, or,
/// when [`REQUIRE_ENV`] is set and the CPU does support it, fails.
pub fn backend_or_skip(kind: BackendKind, test: &str) -> Option<Backend> {
    match Backend::from_kind(kind) {
        Some(backend) => {
            eprintln!("{test}: running backend {kind}");
            Some(backend)
        }
        None if require_all() && cpu_supports(kind) => panic!(
            "{test}: the CPU supports {kind} but Backend::from_kind({kind:?}) returned None \
             ({REQUIRE_ENV} is set, so this is a failure, not a skip)"
        ),
        None => {
            eprintln!("{test}: SKIPPING backend {kind}: not supported on this machine");
            None
        }
    }
}

/// The kernels a test runs for one backend: serial, and parallel with a small threshold so that
/// even short buffers are split into several chunks.
pub fn kernels_for(backend: Backend) -> [Kernel; 2] {
    let base = Kernel::new().with_backend(backend);
    [
        base.with_threading(Threading::Serial),
        base.with_threading(Threading::Parallel)
            .with_parallel_min_len(128),
    ]
}

/// Anything with the signature of `rmsprop_simd::step`.
pub type StepFn<'f, T> =
    dyn Fn(&Hyperparameters, &mut [T], &[T], State<'_, T>) -> Result<(), rmsprop_simd::Error> + 'f;

/// Buffers for one step, with padding around the stepped range `offset..offset + len`.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffers<T> {
    pub params: Vec<T>,
    pub grads: Vec<T>,
    pub square_avg: Vec<T>,
    pub grad_avg: Vec<T>,
    pub momentum_buffer: Vec<T>,
}

impl<T: Element> Buffers<T> {
    /// Runs one step on `offset..offset + len` with `step`, which gets the same arguments as
    /// `rmsprop_simd::step`. State buffers the hyperparameters do not use are not passed.
    pub fn step_with(
        &mut self,
        hp: &Hyperparameters,
        offset: usize,
        len: usize,
        step: &StepFn<'_, T>,
    ) -> Result<(), rmsprop_simd::Error> {
        let r = offset..offset + len;
        let state = crate::state::state_for(
            hp,
            &mut self.square_avg[r.clone()],
            &mut self.grad_avg[r.clone()],
            &mut self.momentum_buffer[r.clone()],
        );
        step(hp, &mut self.params[r.clone()], &self.grads[r], state)
    }
}

/// `true` if `a` and `b` are the same bits, or both NaN (any payload or sign).
pub fn same<T: Element>(a: T, b: T) -> bool {
    a.to_bits_u64() == b.to_bits_u64() || (a.is_nan() && b.is_nan())
}

/// Panics with the first differing element, unless every element is [`same`].
pub fn assert_bitwise<T: Element>(got: &Buffers<T>, want: &Buffers<T>, what: &dyn Fn() -> String) {
    for (name, g, w) in [
        ("params", &got.params, &want.params),
        ("grads", &got.grads, &want.grads),
        ("square_avg", &got.square_avg, &want.square_avg),
        ("grad_avg", &got.grad_avg, &want.grad_avg),
        (
            "momentum_buffer",
            &got.momentum_buffer,
            &want.momentum_buffer,
        ),
    ] {
        assert_eq!(g.len(), w.len());
        if let Some(i) = (0..g.len()).find(|&i| !same(g[i], w[i])) {
            panic!(
                "{}: {name}[{i}] = {:?} ({:#x}), reference {:?} ({:#x})",
                what(),
                g[i],
                g[i].to_bits_u64(),
                w[i],
                w[i].to_bits_u64()
            );
        }
    }
}

/// Steps `start` with the reference and with `kernel` (`steps.len()` consecutive steps, one
/// learning rate each) on `offset..offset + len`, and asserts bitwise equality of every buffer,
/// padding included. Returns the reference result.
pub fn check_against_reference<T: Element>(
    kernel: &Kernel,
    hp: &Hyperparameters,
    lrs: &[f64],
    start: &Buffers<T>,
    offset: usize,
    len: usize,
) -> Buffers<T> {
    let mut want = start.clone();
    let mut got = start.clone();
    for (s, &lr) in lrs.iter().enumerate() {
        let hp = Hyperparameters { lr, ..*hp };
        want.step_with(&hp, offset, len, &|hp, p, g, st| {
            reference::step(hp, p, g, st)
        })
        .expect("valid input");
        got.step_with(&hp, offset, len, &|hp, p, g, st| kernel.step(hp, p, g, st))
            .expect("valid input");
        assert_bitwise(&got, &want, &|| {
            format!(
                "{} {:?} {}: step {s}, offset {offset}, len {len}, {hp:?}",
                kernel.backend(),
                kernel.threading(),
                T::NAME
            )
        });
    }
    want
}

/// Every specialisation of the kernel, with ordinary values: PyTorch's 16 combinations of its
/// four switches, optax's 32 (centered, momentum, nesterov, eps_in_sqrt, bias_correction; at
/// step 3), Keras's 8 (centered, momentum, weight decay).
pub fn variants() -> Vec<Hyperparameters> {
    let mut out = Vec::new();
    for bits in 0..16u32 {
        out.push(Hyperparameters {
            lr: 0.01,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: if bits & 1 != 0 { 0.05 } else { 0.0 },
            momentum: if bits & 2 != 0 { 0.9 } else { 0.0 },
            centered: bits & 4 != 0,
            maximize: bits & 8 != 0,
            ..Default::default()
        });
    }
    for bits in 0..32u32 {
        out.push(Hyperparameters {
            momentum: if bits & 2 != 0 { 0.9 } else { 0.0 },
            centered: bits & 1 != 0,
            semantics: Semantics::Optax(OptaxOptions {
                initial_scale: 0.0,
                nesterov: bits & 4 != 0,
                eps_in_sqrt: bits & 8 != 0,
                bias_correction: bits & 16 != 0,
            }),
            step: 3,
            ..Hyperparameters::optax(0.01)
        });
    }
    for bits in 0..8u32 {
        out.push(Hyperparameters {
            centered: bits & 1 != 0,
            momentum: if bits & 2 != 0 { 0.9 } else { 0.0 },
            weight_decay: if bits & 4 != 0 { 0.05 } else { 0.0 },
            ..Hyperparameters::keras()
        });
    }
    out
}
