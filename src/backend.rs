//! The instruction sets the kernel runs on, their detection, and the one `match` that picks one.

use core::fmt;
use pulp::{Simd, WithSimd};

/// Names an implementation of the kernel, without saying whether this CPU has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// Portable scalar code (one element at a time, through the same generic kernel).
    Scalar,
    /// x86-64 AVX2 + FMA (pulp's `V3`: the x86-64-v3 level), 256-bit vectors.
    Avx2Fma,
    /// x86-64 AVX-512 F/BW/CD/DQ/VL (pulp's `V4`: the x86-64-v4 level), 512-bit vectors.
    Avx512,
    /// aarch64 NEON (Advanced SIMD), 128-bit vectors.
    Neon,
}

impl BackendKind {
    /// Every kind, in the order `Scalar, Avx2Fma, Avx512, Neon`.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::Scalar,
        BackendKind::Avx2Fma,
        BackendKind::Avx512,
        BackendKind::Neon,
    ];

    /// A short stable name: `scalar`, `avx2-fma`, `avx512`, `neon`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Scalar => "scalar",
            BackendKind::Avx2Fma => "avx2-fma",
            BackendKind::Avx512 => "avx512",
            BackendKind::Neon => "neon",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An implementation that this CPU can run: holding a `Backend` proves the instruction set is
/// there. Get one from [`Backend::detect`] (the best), [`Backend::scalar`] (always), or an explicit
/// constructor that returns `None` where the CPU (or the target) lacks the feature.
///
/// ```
/// use rmsprop_simd::{Backend, BackendKind};
///
/// let best = Backend::detect();
/// assert!(Backend::available().any(|b| b == best));
/// assert_eq!(Backend::scalar().kind(), BackendKind::Scalar);
/// if let Some(avx2) = Backend::avx2_fma() {
///     assert_eq!(avx2.kind(), BackendKind::Avx2Fma);
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    token: Token,
}

#[derive(Clone, Copy, Debug)]
enum Token {
    Scalar,
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx2Fma(pulp::x86::V3),
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    Avx512(pulp::x86::V4),
    #[cfg(target_arch = "aarch64")]
    Neon(pulp::aarch64::Neon),
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind()
    }
}
impl Eq for Backend {}

impl Default for Backend {
    /// [`Backend::detect`].
    fn default() -> Self {
        Backend::detect()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind().fmt(f)
    }
}

impl Backend {
    /// The fastest implementation this CPU runs, decided at run time, so a portable build (no
    /// `-C target-cpu`) reaches AVX2/AVX-512/NEON speed. On x86 the check is CPUID (with or
    /// without `std`); on aarch64 it asks the OS with `std`, and without `std` sees only the
    /// features enabled at compile time (NEON is on by default for aarch64 targets).
    ///
    /// On x86 it prefers AVX2+FMA over AVX-512 when both are present: beyond the caches the f32
    /// kernel is bound by memory, where AVX-512 gains nothing, and 512-bit vectors can lower
    /// clocks on some Intel parts. In cache AVX-512 is now faster (its square root avoids the
    /// divider, see `src/sqrt.rs`: 0.33 against 0.49 ns/element at 3e4 in one probe run on the
    /// 2-core Intel Xeon development VM); the default has not been switched on that one figure.
    /// Force [`Backend::avx512`] to use it.
    pub fn detect() -> Backend {
        // Order of preference; the first available wins.
        for kind in [BackendKind::Avx2Fma, BackendKind::Neon, BackendKind::Avx512] {
            if let Some(backend) = Backend::from_kind(kind) {
                return backend;
            }
        }
        Backend::scalar()
    }

    /// The fastest implementation for a pass with 16-bit storage (bf16/f16 params, grads,
    /// state or copy): AVX-512 first where the CPU has it, then as [`Backend::detect`]. Such a
    /// pass widens and rounds every 16-bit value with integer vector code, work that 512-bit
    /// vectors halve (measured on the development VM: all-bf16 steps 1.4-1.7x faster than on AVX2, while
    /// the f32 step gains nothing); [`crate::Kernel`] uses it for those passes by default.
    pub fn detect_mixed() -> Backend {
        Backend::avx512().unwrap_or_else(Backend::detect)
    }

    /// The AVX2 + FMA token, when this is the AVX2 backend.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    pub(crate) fn avx2_token(self) -> Option<pulp::x86::V3> {
        match self.token {
            Token::Avx2Fma(simd) => Some(simd),
            _ => None,
        }
    }

    /// The AVX-512 token, when this is the AVX-512 backend.
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    pub(crate) fn avx512_token(self) -> Option<pulp::x86::V4> {
        match self.token {
            Token::Avx512(simd) => Some(simd),
            _ => None,
        }
    }

    /// The portable scalar implementation, available everywhere.
    pub fn scalar() -> Backend {
        Backend {
            token: Token::Scalar,
        }
    }

    /// AVX2 + FMA (x86-64-v3), if this CPU has it.
    pub fn avx2_fma() -> Option<Backend> {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return Some(Backend {
                token: Token::Avx2Fma(simd),
            });
        }
        None
    }

    /// AVX-512 (x86-64-v4), if this CPU has it.
    pub fn avx512() -> Option<Backend> {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if let Some(simd) = pulp::x86::V4::try_new() {
            return Some(Backend {
                token: Token::Avx512(simd),
            });
        }
        None
    }

    /// NEON, if this is an aarch64 CPU with it.
    pub fn neon() -> Option<Backend> {
        #[cfg(target_arch = "aarch64")]
        if let Some(simd) = pulp::aarch64::Neon::try_new() {
            return Some(Backend {
                token: Token::Neon(simd),
            });
        }
        None
    }

    /// The implementation of `kind`, if this CPU has it.
    pub fn from_kind(kind: BackendKind) -> Option<Backend> {
        match kind {
            BackendKind::Scalar => Some(Backend::scalar()),
            BackendKind::Avx2Fma => Backend::avx2_fma(),
            BackendKind::Avx512 => Backend::avx512(),
            BackendKind::Neon => Backend::neon(),
        }
    }

    /// Every implementation this CPU runs, scalar first.
    pub fn available() -> impl Iterator<Item = Backend> {
        BackendKind::ALL.into_iter().filter_map(Backend::from_kind)
    }

    /// Which implementation this is.
    pub fn kind(self) -> BackendKind {
        match self.token {
            Token::Scalar => BackendKind::Scalar,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Token::Avx2Fma(_) => BackendKind::Avx2Fma,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Token::Avx512(_) => BackendKind::Avx512,
            #[cfg(target_arch = "aarch64")]
            Token::Neon(_) => BackendKind::Neon,
        }
    }

    /// How many elements of `T` one vector holds (1 for scalar).
    ///
    /// ```
    /// use rmsprop_simd::Backend;
    /// assert_eq!(Backend::scalar().lanes::<f32>(), 1);
    /// if let Some(b) = Backend::avx2_fma() { assert_eq!(b.lanes::<f32>(), 8); }
    /// ```
    pub fn lanes<T: crate::Element>(self) -> usize {
        struct Lanes<T>(core::marker::PhantomData<T>);
        impl<T: crate::Element> WithSimd for Lanes<T> {
            type Output = usize;
            fn with_simd<S: Simd>(self, _: S) -> usize {
                <T as crate::element::sealed::Sealed>::lanes::<S>()
            }
        }
        self.vectorize(Lanes::<T>(core::marker::PhantomData))
    }

    /// Runs `op` with this implementation's instruction set enabled: the only place that maps a
    /// `Backend` onto pulp.
    #[inline(always)]
    pub(crate) fn vectorize<Op: WithSimd>(self, op: Op) -> Op::Output {
        match self.token {
            Token::Scalar => Simd::vectorize(pulp::Scalar::new(), op),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Token::Avx2Fma(simd) => Simd::vectorize(simd, op),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Token::Avx512(simd) => Simd::vectorize(simd, op),
            #[cfg(target_arch = "aarch64")]
            Token::Neon(simd) => Simd::vectorize(simd, op),
        }
    }
}
