//! The C ABI's Rust side, called as C would call it (also under miri: the serial tests under
//! Stacked Borrows, the pool tests under Tree Borrows, as rayon needs).

use super::*;
use rmsprop::reference;
use rmsprop::{f16, Storage};

fn context(threads: u32, min_len: u64) -> *mut RmspropContext {
    let mut o = core::mem::MaybeUninit::uninit();
    // SAFETY: writes one struct into the local, which is then initialised.
    let mut o: RmspropContextOptions = unsafe {
        assert_eq!(
            rmsprop_context_options_init(
                o.as_mut_ptr(),
                core::mem::size_of::<RmspropContextOptions>()
            ),
            RMSPROP_OK
        );
        o.assume_init()
    };
    o.threads = threads;
    o.parallel_min_len = min_len;
    let mut ctx = core::ptr::null_mut();
    // SAFETY: valid options and out pointer.
    assert_eq!(unsafe { rmsprop_context_create(&o, &mut ctx) }, RMSPROP_OK);
    assert!(!ctx.is_null());
    ctx
}

fn hp(momentum: f64, centered: bool) -> RmspropHyperparameters {
    let mut h = core::mem::MaybeUninit::uninit();
    // SAFETY: writes one struct into the local, which is then initialised.
    let mut h: RmspropHyperparameters = unsafe {
        assert_eq!(
            rmsprop_hyperparameters_init(
                h.as_mut_ptr(),
                core::mem::size_of::<RmspropHyperparameters>()
            ),
            RMSPROP_OK
        );
        h.assume_init()
    };
    h.momentum = momentum;
    h.centered = centered as u8;
    h
}

fn message(ctx: *const RmspropContext) -> String {
    let mut buf = [0 as c_char; 256];
    // SAFETY: live context, writable buffer.
    let n = unsafe { rmsprop_context_last_error(ctx, buf.as_mut_ptr(), buf.len()) };
    let bytes: Vec<u8> = buf.iter().take(n.min(255)).map(|&c| c as u8).collect();
    String::from_utf8(bytes).unwrap()
}

struct Tensor {
    p: Vec<f32>,
    g: Vec<f32>,
    v: Vec<f32>,
    ga: Vec<f32>,
    b: Vec<f32>,
}

fn tensor(n: usize, seed: u32) -> Tensor {
    let f = |k: u32| {
        (0..n)
            .map(|i| ((i as u32 * 7 + seed * 13 + k) % 97) as f32 / 97.0 - 0.3)
            .collect::<Vec<f32>>()
    };
    Tensor {
        p: f(1),
        g: f(2),
        v: f(3).iter().map(|x| x.abs()).collect(),
        ga: f(4),
        b: f(5),
    }
}

fn reference_step(t: &mut Tensor, h: &RmspropHyperparameters) {
    // SAFETY: a live struct.
    let hp = unsafe { hyperparameters(h) }.unwrap();
    let (c, m) = hp.uses_state();
    let mut st = State::new(&mut t.v[..]);
    if c {
        st = st.with_grad_avg(&mut t.ga[..]);
    }
    if m {
        st = st.with_momentum_buffer(&mut t.b[..]);
    }
    reference::step(&hp, &mut t.p, &t.g, st).unwrap();
}

/// The multi-tensor call equals one reference step per tensor; a tensor without gradient is
/// untouched.
fn multi_equals_reference(threads: u32, min_len: u64) {
    let ctx = context(threads, min_len);
    let hps = [hp(0.9, true), hp(0.0, false)];
    let lens = [0usize, 1, 17, 300, 65];
    let mut ts: Vec<Tensor> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| tensor(n, i as u32))
        .collect();
    let mut want: Vec<Tensor> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| tensor(n, i as u32))
        .collect();
    let hp_of = |i: usize| &hps[i % 2];
    let skip = 3; // no gradient for this one
    let hp_ptrs: Vec<*const RmspropHyperparameters> =
        (0..lens.len()).map(|i| hp_of(i) as *const _).collect();
    let mut p: Vec<*mut f32> = ts.iter_mut().map(|t| t.p.as_mut_ptr()).collect();
    let g: Vec<*const f32> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == skip {
                core::ptr::null()
            } else {
                t.g.as_ptr()
            }
        })
        .collect();
    let v: Vec<*mut f32> = ts.iter_mut().map(|t| t.v.as_mut_ptr()).collect();
    let ga: Vec<*mut f32> = ts
        .iter_mut()
        .enumerate()
        .map(|(i, t)| {
            if i % 2 == 0 {
                t.ga.as_mut_ptr()
            } else {
                core::ptr::null_mut()
            }
        })
        .collect();
    let b: Vec<*mut f32> = ts
        .iter_mut()
        .enumerate()
        .map(|(i, t)| {
            if i % 2 == 0 {
                t.b.as_mut_ptr()
            } else {
                core::ptr::null_mut()
            }
        })
        .collect();
    // SAFETY: every array has lens.len() entries; every buffer lives and is disjoint.
    let rc = unsafe {
        rmsprop_step_multi_f32(
            ctx,
            lens.len(),
            hp_ptrs.as_ptr(),
            lens.as_ptr(),
            p.as_mut_ptr(),
            g.as_ptr(),
            v.as_ptr(),
            ga.as_ptr(),
            b.as_ptr(),
        )
    };
    assert_eq!(rc, RMSPROP_OK, "{}", message(ctx));
    for (i, w) in want.iter_mut().enumerate() {
        if i != skip {
            reference_step(w, hp_of(i));
        }
        assert_eq!(ts[i].p, w.p, "tensor {i}");
        assert_eq!(ts[i].v, w.v, "tensor {i}");
        assert_eq!(ts[i].b, w.b, "tensor {i}");
    }
    // SAFETY: created above, freed once.
    unsafe { rmsprop_context_free(ctx) };
}

#[test]
fn multi_step_serial() {
    multi_equals_reference(1, 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "rayon's pool: run under Tree Borrows in CI (pool_ tests)"
)]
fn pool_multi_step_parallel() {
    multi_equals_reference(2, 128);
}

#[test]
fn errors_name_the_tensor_and_write_nothing() {
    let ctx = context(1, 0);
    let h = hp(0.9, false);
    let mut t = tensor(8, 1);
    let before = t.p.clone();
    // momentum without a momentum buffer
    // SAFETY: live buffers of 8 elements.
    let rc = unsafe {
        rmsprop_step_f32(
            ctx,
            &h,
            8,
            t.p.as_mut_ptr(),
            t.g.as_ptr(),
            t.v.as_mut_ptr(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
        )
    };
    assert_eq!(rc, RMSPROP_ERROR_MISSING_STATE);
    assert!(message(ctx).contains("momentum_buffer"), "{}", message(ctx));
    assert_eq!(t.p, before);
    // grads overlapping params
    let p = t.p.as_mut_ptr();
    // SAFETY: live buffers (overlapping on purpose: refused before any access).
    let rc = unsafe {
        rmsprop_step_f32(
            ctx,
            &h,
            8,
            p,
            p,
            t.v.as_mut_ptr(),
            core::ptr::null_mut(),
            t.b.as_mut_ptr(),
        )
    };
    assert_eq!(rc, RMSPROP_ERROR_OVERLAP);
    assert_eq!(t.p, before);
    // invalid lr
    let mut bad = h;
    bad.lr = f64::NAN;
    // SAFETY: live buffers.
    let rc = unsafe {
        rmsprop_step_f32(
            ctx,
            &bad,
            8,
            t.p.as_mut_ptr(),
            t.g.as_ptr(),
            t.v.as_mut_ptr(),
            core::ptr::null_mut(),
            t.b.as_mut_ptr(),
        )
    };
    assert_eq!(rc, RMSPROP_ERROR_INVALID_HYPERPARAMETER);
    assert!(message(ctx).contains("lr"));
    assert_eq!(t.p, before);
    // SAFETY: created above.
    unsafe { rmsprop_context_free(ctx) };
}

#[test]
fn shared_read_only_gradients_are_allowed() {
    let ctx = context(1, 0);
    let h = hp(0.0, false);
    let g = [0.5f32; 16];
    let (mut a, mut b) = (vec![1.0f32; 16], vec![1.0f32; 16]);
    let (mut va, mut vb) = (vec![0.0f32; 16], vec![0.0f32; 16]);
    let hps = [&h as *const _, &h as *const _];
    let lens = [16usize, 16];
    let p = [a.as_mut_ptr(), b.as_mut_ptr()];
    let gs = [g.as_ptr(), g.as_ptr()];
    let v = [va.as_mut_ptr(), vb.as_mut_ptr()];
    // SAFETY: arrays of 2; buffers live; both tensors read one gradient buffer.
    let rc = unsafe {
        rmsprop_step_multi_f32(
            ctx,
            2,
            hps.as_ptr(),
            lens.as_ptr(),
            p.as_ptr(),
            gs.as_ptr(),
            v.as_ptr(),
            core::ptr::null(),
            core::ptr::null(),
        )
    };
    assert_eq!(rc, RMSPROP_OK, "{}", message(ctx));
    assert_eq!(a, b);
    // SAFETY: created above.
    unsafe { rmsprop_context_free(ctx) };
}

#[test]
fn versioned_structs() {
    let mut h = hp(0.0, false);
    assert_eq!((h.version, h.struct_size), (2, 72));
    // an unknown later version is refused; so are non-zero reserved bytes and short sizes
    for edit in [
        (|h: &mut RmspropHyperparameters| h.version = 3) as fn(&mut RmspropHyperparameters),
        |h| h.reserved[3] = 1,
        |h| h.struct_size = 64, // version 2 needs 72
        |h| h.version = 0,
        |h| {
            // version 1: its 14 reserved bytes are where version 2 has flags
            h.version = 1;
            h.struct_size = 64;
            h.semantics = RMSPROP_SEMANTICS_OPTAX;
        },
    ] {
        let mut x = h;
        edit(&mut x);
        // SAFETY: a live struct.
        assert_eq!(
            unsafe { hyperparameters(&x) }.unwrap_err().0,
            RMSPROP_ERROR_STRUCT_SIZE
        );
    }
    // a version-1 struct of 64 bytes (an old caller) is read as PyTorch's semantics, and the
    // bytes after it are not read
    #[repr(C)]
    struct V1 {
        head: [u8; 64],
        after: [u8; 8],
    }
    let mut v1 = h;
    v1.version = 1;
    v1.struct_size = 64;
    v1.eps_in_sqrt = 0;
    v1.keras_lr_f32 = 0;
    v1.lr = 0.5;
    // SAFETY: RmspropHyperparameters is 72 plain bytes.
    let bytes: [u8; 72] = unsafe { core::mem::transmute(v1) };
    let mut old = V1 {
        head: [0; 64],
        after: [0xFF; 8],
    };
    old.head.copy_from_slice(&bytes[..64]);
    // SAFETY: reads 64 bytes (version 1's size) from a 72-byte local.
    let read = unsafe { hyperparameters((&old as *const V1).cast()) }.unwrap();
    assert_eq!((read.lr, read.step), (0.5, 0));
    assert_eq!(read.semantics, rmsprop::Semantics::PyTorch);
    // a larger struct (a later header's size with version-2 fields) is accepted
    h.struct_size = 128;
    #[repr(C)]
    struct Bigger {
        hp: RmspropHyperparameters,
        more: [u8; 56],
    }
    let big = Bigger {
        hp: h,
        more: [0xAB; 56],
    };
    // SAFETY: `big` is readable for 128 bytes.
    assert!(unsafe { hyperparameters(&big.hp) }.is_ok());
    assert_eq!(core::mem::size_of::<RmspropHyperparameters>(), 72);
    assert_eq!(core::mem::size_of::<RmspropContextOptions>(), 40);
    // the framework initialisers
    let mut x = core::mem::MaybeUninit::uninit();
    // SAFETY: writes one struct into the local.
    let x = unsafe {
        rmsprop_hyperparameters_init_optax(x.as_mut_ptr(), 72, 0.01);
        x.assume_init()
    };
    assert_eq!(
        (x.semantics, x.eps_in_sqrt, x.alpha),
        (RMSPROP_SEMANTICS_OPTAX, 1, 0.9)
    );
    // SAFETY: a live struct.
    let y = unsafe { hyperparameters(&x) }.unwrap();
    assert!(matches!(y.semantics, rmsprop::Semantics::Optax(_)));
}

#[test]
fn null_and_static_strings() {
    // SAFETY: NULL is allowed for each.
    unsafe {
        assert_eq!(
            rmsprop_context_last_error(core::ptr::null(), core::ptr::null_mut(), 0),
            0
        );
        assert_eq!(rmsprop_context_backend(core::ptr::null()), -1);
        assert_eq!(
            rmsprop_step_f32(
                core::ptr::null_mut(),
                core::ptr::null(),
                0,
                core::ptr::null_mut(),
                core::ptr::null(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut()
            ),
            RMSPROP_ERROR_NULL_POINTER
        );
        rmsprop_context_free(core::ptr::null_mut());
    }
    for code in -1..=13 {
        let s = rmsprop_error_string(code);
        assert!(!s.is_null());
    }
    assert_eq!(rmsprop_abi_version(), 1);
}

/// A storage type of the mixed export, as the test builds its buffers.
trait Dtype: Storage<Compute = f32> + Copy + core::fmt::Debug {
    const CODE: i32;
    fn make(x: f32) -> Self;
    fn bits(self) -> u32;
}

impl Dtype for f32 {
    const CODE: i32 = RMSPROP_DTYPE_F32;
    fn make(x: f32) -> Self {
        x
    }
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

impl Dtype for bf16 {
    const CODE: i32 = RMSPROP_DTYPE_BF16;
    fn make(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
}

impl Dtype for f16 {
    const CODE: i32 = RMSPROP_DTYPE_F16;
    fn make(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn bits(self) -> u32 {
        self.to_bits() as u32
    }
}

fn step_options_struct(grad_scale: f64, clip: Option<f64>, stochastic: bool) -> RmspropStepOptions {
    let mut o = core::mem::MaybeUninit::uninit();
    // SAFETY: writes one struct into the local, which is then initialised.
    let mut o: RmspropStepOptions = unsafe {
        assert_eq!(
            rmsprop_step_options_init(o.as_mut_ptr(), core::mem::size_of::<RmspropStepOptions>()),
            RMSPROP_OK
        );
        o.assume_init()
    };
    o.grad_scale = grad_scale;
    if let Some(c) = clip {
        o.clip = 1;
        o.clip_value = c;
    }
    if stochastic {
        o.rounding = RMSPROP_ROUNDING_STOCHASTIC;
        o.seed = 99;
        o.step = 3;
    }
    o
}

/// A serial context, and one with a pool of 2 threads for steps of 64+ elements (serial only
/// under miri).
fn serial_and_pool() -> Vec<*mut RmspropContext> {
    if cfg!(miri) {
        vec![context(1, 0)]
    } else {
        vec![context(1, 0), context(2, 64)]
    }
}

fn free_all(contexts: Vec<*mut RmspropContext>) {
    for ctx in contexts {
        // SAFETY: created by `context`, freed once.
        unsafe { rmsprop_context_free(ctx) };
    }
}

/// `rmsprop_step_mixed` for params `P`, grads `G`, state `S` (and a copy when `copy` is a
/// 16-bit dtype) equals `reference::step_with` bit for bit, serial and on a pool.
fn mixed_equals_reference<P: Dtype, G: Dtype, S: Dtype>(copy: i32) {
    let n = if cfg!(miri) { 19 } else { 1001 };
    let contexts = serial_and_pool();
    for &ctx in &contexts {
        for (h, opts) in [
            (hp(0.0, false), None),
            (
                hp(0.9, true),
                Some(step_options_struct(1024.0, Some(0.5), true)),
            ),
            (hp(0.0, false), Some(step_options_struct(3.0, None, false))),
        ] {
            let t = tensor(n, 7);
            let mk = |v: &[f32], s: f32| -> Vec<f32> { v.iter().map(|x| x * s).collect() };
            let g: Vec<G> = mk(&t.g, 1024.0).into_iter().map(G::make).collect();
            let mut p: Vec<P> = t.p.iter().map(|&x| P::make(x)).collect();
            let mut v: Vec<S> = t.v.iter().map(|&x| S::make(x)).collect();
            let mut ga: Vec<S> = t.ga.iter().map(|&x| S::make(x * 0.01)).collect();
            let mut b: Vec<S> = t.b.iter().map(|&x| S::make(x)).collect();
            let mut c = vec![0u16; n];
            let (mut p2, mut v2, mut ga2, mut b2, mut c2) =
                (p.clone(), v.clone(), ga.clone(), b.clone(), c.clone());
            // The reference.
            // SAFETY: live structs.
            let rhp = unsafe { hyperparameters(&h) }.unwrap();
            let ropts =
                unsafe { step_options(opts.as_ref().map_or(core::ptr::null(), |o| o)) }.unwrap();
            let (centered, momentum) = rhp.uses_state();
            let mut st = State::new(&mut v2[..]);
            if centered {
                st = st.with_grad_avg(&mut ga2[..]);
            }
            if momentum {
                st = st.with_momentum_buffer(&mut b2[..]);
            }
            let rcopy = match copy {
                RMSPROP_DTYPE_BF16 => Some(ParamsCopy::Bf16(bytes_as(&mut c2))),
                RMSPROP_DTYPE_F16 => Some(ParamsCopy::F16(bytes_as(&mut c2))),
                _ => None,
            };
            reference::step_with(&rhp, &ropts, &mut p2, &g, st, rcopy).unwrap();
            let null = core::ptr::null_mut::<c_void>();
            // SAFETY: live context and structs; buffers of `n` elements of their dtypes.
            let code = unsafe {
                rmsprop_step_mixed(
                    ctx,
                    &h,
                    opts.as_ref().map_or(core::ptr::null(), |o| o),
                    n,
                    p.as_mut_ptr().cast(),
                    P::CODE,
                    g.as_ptr().cast(),
                    G::CODE,
                    v.as_mut_ptr().cast(),
                    if centered {
                        ga.as_mut_ptr().cast()
                    } else {
                        null
                    },
                    if momentum {
                        b.as_mut_ptr().cast()
                    } else {
                        null
                    },
                    S::CODE,
                    if copy == RMSPROP_DTYPE_NONE {
                        core::ptr::null_mut()
                    } else {
                        c.as_mut_ptr()
                    },
                    copy,
                )
            };
            assert_eq!(code, RMSPROP_OK, "{}", message(ctx));
            let bits = |x: &[P]| x.iter().map(|y| y.bits()).collect::<Vec<_>>();
            let sbits = |x: &[S]| x.iter().map(|y| y.bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p), bits(&p2), "params");
            assert_eq!(sbits(&v), sbits(&v2), "square_avg");
            assert_eq!(sbits(&ga), sbits(&ga2), "grad_avg");
            assert_eq!(sbits(&b), sbits(&b2), "momentum_buffer");
            assert_eq!(c, c2, "params_copy");
        }
    }
    free_all(contexts);
}

/// `u16` bits as a 16-bit float type (same size and alignment).
fn bytes_as<T: Dtype>(bits: &mut [u16]) -> &mut [T] {
    assert_eq!(core::mem::size_of::<T>(), 2);
    // SAFETY: T is bf16 or f16 (checked size), `repr(transparent)` over u16.
    unsafe { core::slice::from_raw_parts_mut(bits.as_mut_ptr().cast(), bits.len()) }
}

#[test]
fn mixed_master_weights() {
    mixed_equals_reference::<f32, bf16, f32>(RMSPROP_DTYPE_BF16);
    mixed_equals_reference::<f32, f16, f32>(RMSPROP_DTYPE_F16);
    mixed_equals_reference::<f32, f32, f32>(RMSPROP_DTYPE_NONE);
}

#[test]
fn mixed_low_precision() {
    mixed_equals_reference::<bf16, bf16, bf16>(RMSPROP_DTYPE_NONE);
    mixed_equals_reference::<bf16, bf16, f32>(RMSPROP_DTYPE_NONE);
    mixed_equals_reference::<f16, f16, f16>(RMSPROP_DTYPE_NONE);
    mixed_equals_reference::<f16, f32, f32>(RMSPROP_DTYPE_NONE);
}

#[test]
fn mixed_errors_write_nothing() {
    let ctx = context(1, 0);
    let h = hp(0.0, false);
    let mut p = vec![bf16::ONE; 8];
    let g = [bf16::ONE; 8];
    let mut v = vec![0.0f32; 8];
    let mut c = vec![7u16; 8];
    let null = core::ptr::null_mut::<c_void>();
    let call = |pd: i32,
                gd: i32,
                sd: i32,
                copy: *mut u16,
                cd: i32,
                o: *const RmspropStepOptions,
                p: &mut [bf16],
                v: &mut [f32]| {
        // SAFETY: live context; buffers of 8 elements (of the dtypes the valid calls name).
        unsafe {
            rmsprop_step_mixed(
                ctx,
                &h,
                o,
                8,
                p.as_mut_ptr().cast(),
                pd,
                g.as_ptr().cast(),
                gd,
                v.as_mut_ptr().cast(),
                null,
                null,
                sd,
                copy,
                cd,
            )
        }
    };
    let bad_scale = step_options_struct(0.0, None, false);
    let mut bad_rounding = step_options_struct(1.0, None, false);
    bad_rounding.rounding = 9;
    let cp = c.as_mut_ptr();
    for (code, args) in [
        (
            RMSPROP_ERROR_UNSUPPORTED_DTYPE,
            (7, 1, 0, core::ptr::null_mut(), -1, core::ptr::null()),
        ),
        (
            RMSPROP_ERROR_UNSUPPORTED_DTYPE,
            (1, 1, 0, cp, 0, core::ptr::null()),
        ),
        (
            RMSPROP_ERROR_UNSUPPORTED_DTYPE,
            (1, 1, 0, cp, -1, core::ptr::null()),
        ),
        (
            RMSPROP_ERROR_INVALID_HYPERPARAMETER,
            (1, 1, 0, cp, 1, &bad_scale as *const _),
        ),
        (
            RMSPROP_ERROR_OTHER,
            (1, 1, 0, cp, 1, &bad_rounding as *const _),
        ),
    ] {
        let (pd, gd, sd, copy, cd, o) = args;
        assert_eq!(
            call(pd, gd, sd, copy, cd, o, &mut p, &mut v),
            code,
            "{}",
            message(ctx)
        );
        assert!(!message(ctx).is_empty());
        assert!(p.iter().all(|x| *x == bf16::ONE) && v.iter().all(|x| *x == 0.0));
        assert!(c.iter().all(|&x| x == 7));
    }
    // The copy may not overlap the params.
    let pp = p.as_mut_ptr().cast::<u16>();
    assert_eq!(
        call(1, 1, 0, pp, 1, core::ptr::null(), &mut p, &mut v),
        RMSPROP_ERROR_OVERLAP
    );
    // SAFETY: created above, freed once.
    unsafe { rmsprop_context_free(ctx) };
}

/// A buffer of `n` elements of `dtype` (f32 or 16-bit bits), in `u32` words (4-aligned).
fn dtype_buffer(dtype: i32, n: usize, f: impl Fn(usize) -> f32) -> Vec<u32> {
    let mut words = vec![0u32; n];
    match dtype {
        RMSPROP_DTYPE_F32 => words
            .iter_mut()
            .enumerate()
            .for_each(|(i, w)| *w = f(i).to_bits()),
        _ => {
            // SAFETY: `u16` has no invalid values and a smaller alignment; 2n halves of n words.
            let h: &mut [u16] =
                unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), 2 * n) };
            for (i, x) in h[..n].iter_mut().enumerate() {
                *x = match dtype {
                    RMSPROP_DTYPE_BF16 => bf16::from_f32(f(i)).to_bits(),
                    _ => f16::from_f32(f(i)).to_bits(),
                };
            }
        }
    }
    words
}

/// One tensor of a multi-tensor mixed step: dtypes, hyperparameters and its buffers.
#[derive(Clone)]
struct MixedCase {
    dtypes: [i32; 4], // params, grads, state, copy
    hp: RmspropHyperparameters,
    n: usize,
    bufs: [Vec<u32>; 6], // params, grads, square_avg, grad_avg, momentum_buffer, copy
    no_grad: bool,
}

impl MixedCase {
    fn new(dtypes: [i32; 4], hp: RmspropHyperparameters, n: usize, seed: usize) -> Self {
        let v = |k: usize| move |i: usize| ((i * 7 + seed * 13 + k * 5) % 23) as f32 * 0.01 + 0.005;
        let [pd, gd, sd, _] = dtypes;
        MixedCase {
            dtypes,
            hp,
            n,
            bufs: [
                dtype_buffer(pd, n, v(1)),
                dtype_buffer(gd, n, |i| v(2)(i) * 512.0 - 3.0),
                dtype_buffer(sd, n, v(3)),
                dtype_buffer(sd, n, |i| v(4)(i) * 0.01),
                dtype_buffer(sd, n, v(5)),
                vec![0x7777_7777; n],
            ],
            no_grad: false,
        }
    }

    fn ptr(&mut self, k: usize) -> *mut c_void {
        let (centered, momentum) = (self.hp.centered != 0, self.hp.momentum > 0.0);
        let used = match k {
            3 => centered,
            4 => momentum,
            5 => self.dtypes[3] != RMSPROP_DTYPE_NONE,
            1 => !self.no_grad,
            _ => true,
        };
        if used {
            self.bufs[k].as_mut_ptr().cast()
        } else {
            core::ptr::null_mut()
        }
    }
}

/// Steps `cases` with one `rmsprop_step_multi_mixed` call.
fn multi_mixed_call(
    ctx: *mut RmspropContext,
    cases: &mut [MixedCase],
    o: &RmspropStepOptions,
) -> i32 {
    // The buffers' pointers first (each takes `&mut` of its case), then the shared ones.
    let ptrs =
        |k: usize, cases: &mut [MixedCase]| cases.iter_mut().map(|c| c.ptr(k)).collect::<Vec<_>>();
    let (p, g, v, ga, b, c) = (
        ptrs(0, cases),
        ptrs(1, cases),
        ptrs(2, cases),
        ptrs(3, cases),
        ptrs(4, cases),
        ptrs(5, cases),
    );
    let hps: Vec<*const RmspropHyperparameters> = cases.iter().map(|c| &c.hp as *const _).collect();
    let lens: Vec<usize> = cases.iter().map(|c| c.n).collect();
    let d = |k: usize| cases.iter().map(|c| c.dtypes[k]).collect::<Vec<i32>>();
    let (pd, gd, sd, cd) = (d(0), d(1), d(2), d(3));
    let g: Vec<*const c_void> = g.into_iter().map(|x| x as *const c_void).collect();
    let c: Vec<*mut u16> = c.into_iter().map(|x| x.cast()).collect();
    // SAFETY: live context and structs; every array of `cases.len()` entries; buffers of their
    // lengths and dtypes.
    unsafe {
        rmsprop_step_multi_mixed(
            ctx,
            cases.len(),
            hps.as_ptr(),
            o,
            lens.as_ptr(),
            p.as_ptr(),
            pd.as_ptr(),
            g.as_ptr(),
            gd.as_ptr(),
            v.as_ptr(),
            ga.as_ptr(),
            b.as_ptr(),
            sd.as_ptr(),
            c.as_ptr(),
            cd.as_ptr(),
        )
    }
}

fn mixed_cases(n: usize) -> Vec<MixedCase> {
    use {RMSPROP_DTYPE_BF16 as B, RMSPROP_DTYPE_F16 as H, RMSPROP_DTYPE_F32 as F};
    let mut skipped = MixedCase::new([B, B, B, RMSPROP_DTYPE_NONE], hp(0.0, false), n, 2);
    skipped.no_grad = true;
    vec![
        MixedCase::new([F, B, F, B], hp(0.9, false), n, 0),
        MixedCase::new([B, B, B, RMSPROP_DTYPE_NONE], hp(0.0, true), n + 3, 1),
        skipped,
        MixedCase::new([H, H, F, RMSPROP_DTYPE_NONE], hp(0.0, false), n / 2, 3),
        MixedCase::new([F, H, F, H], hp(0.5, true), 5, 4),
    ]
}

/// `rmsprop_step_multi_mixed` equals one `rmsprop_step_mixed` per tensor (with the tensor's
/// seed), bit for bit, serial and on a pool; a tensor without gradient is untouched.
#[test]
fn multi_mixed_equals_single_calls() {
    let n = if cfg!(miri) { 21 } else { 3001 };
    let contexts = serial_and_pool();
    for &ctx in &contexts {
        for o in [
            step_options_struct(1.0, None, false),
            step_options_struct(1024.0, Some(0.5), true),
        ] {
            let start = mixed_cases(n);
            let mut multi = start.clone();
            assert_eq!(
                multi_mixed_call(ctx, &mut multi, &o),
                RMSPROP_OK,
                "{}",
                message(ctx)
            );
            let mut single = start.clone();
            for (i, c) in single.iter_mut().enumerate() {
                if c.no_grad {
                    continue;
                }
                let mut oi = o;
                oi.seed ^= (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let (p, g, v, ga, b, cp) =
                    (c.ptr(0), c.ptr(1), c.ptr(2), c.ptr(3), c.ptr(4), c.ptr(5));
                // SAFETY: live context and structs; buffers of `c.n` elements of their dtypes.
                let code = unsafe {
                    rmsprop_step_mixed(
                        ctx,
                        &c.hp,
                        &oi,
                        c.n,
                        p,
                        c.dtypes[0],
                        g,
                        c.dtypes[1],
                        v,
                        ga,
                        b,
                        c.dtypes[2],
                        cp.cast(),
                        c.dtypes[3],
                    )
                };
                assert_eq!(code, RMSPROP_OK, "{}", message(ctx));
            }
            for (i, (m, s)) in multi.iter().zip(&single).enumerate() {
                assert!(
                    m.bufs == s.bufs,
                    "tensor {i} differs from its single-tensor step"
                );
            }
            assert!(
                multi[2].bufs == start[2].bufs,
                "the tensor without gradient was written"
            );
            assert!(multi[0].bufs != start[0].bufs, "nothing was stepped");
        }
    }
    free_all(contexts);
}

/// Any bad tensor refuses the whole call before anything is written, naming the tensor.
#[test]
fn multi_mixed_errors_write_nothing() {
    let ctx = context(1, 0);
    let o = step_options_struct(1.0, None, false);
    let start = mixed_cases(40);
    let check = |mutate: &dyn Fn(&mut Vec<MixedCase>), code: i32, tensor: &str| {
        let mut cases = start.clone();
        mutate(&mut cases);
        let before = cases.clone();
        assert_eq!(
            multi_mixed_call(ctx, &mut cases, &o),
            code,
            "{}",
            message(ctx)
        );
        assert!(message(ctx).contains(tensor), "{}", message(ctx));
        for (a, b) in cases.iter().zip(&before) {
            assert!(
                a.bufs == b.bufs,
                "written despite the error: {}",
                message(ctx)
            );
        }
    };
    check(
        &|c| c[3].dtypes[1] = 9,
        RMSPROP_ERROR_UNSUPPORTED_DTYPE,
        "tensor 3",
    );
    check(
        &|c| c[4].dtypes[3] = RMSPROP_DTYPE_F32,
        RMSPROP_ERROR_UNSUPPORTED_DTYPE,
        "tensor 4",
    );
    check(
        &|c| c[1].hp.lr = -1.0,
        RMSPROP_ERROR_INVALID_HYPERPARAMETER,
        "tensor 1",
    );
    // lr overflows f32 (the step computes in float): refused before tensor 0 is written.
    check(
        &|c| c[3].hp.lr = 1e300,
        RMSPROP_ERROR_INVALID_HYPERPARAMETER,
        "tensor 3",
    );
    // Tensor 1's params are tensor 0's square_avg: an overlap across tensors.
    let mut cases = start.clone();
    let before = cases.clone();
    let lens = [8usize, 8];
    let (pd, gd, sd) = (
        [RMSPROP_DTYPE_F32; 2],
        [RMSPROP_DTYPE_F32; 2],
        [RMSPROP_DTYPE_F32; 2],
    );
    let shared = cases[0].bufs[2].as_mut_ptr().cast::<c_void>();
    let p = [cases[0].bufs[0].as_mut_ptr().cast::<c_void>(), shared];
    let g = [
        cases[0].bufs[1].as_ptr().cast::<c_void>(),
        cases[1].bufs[1].as_ptr().cast(),
    ];
    let v = [shared, cases[1].bufs[2].as_mut_ptr().cast()];
    let mut h0 = hp(0.0, false);
    h0.lr = 0.5;
    let hps2 = [&h0 as *const _, &h0 as *const _];
    // SAFETY: live context; 2-entry arrays; f32 buffers of at least 8 elements.
    let code = unsafe {
        rmsprop_step_multi_mixed(
            ctx,
            2,
            hps2.as_ptr(),
            &o,
            lens.as_ptr(),
            p.as_ptr(),
            pd.as_ptr(),
            g.as_ptr(),
            gd.as_ptr(),
            v.as_ptr(),
            core::ptr::null(),
            core::ptr::null(),
            sd.as_ptr(),
            core::ptr::null(),
            core::ptr::null(),
        )
    };
    assert_eq!(code, RMSPROP_ERROR_OVERLAP, "{}", message(ctx));
    assert!(cases.iter().zip(&before).all(|(a, b)| a.bufs == b.bufs));
    // SAFETY: created above, freed once.
    unsafe { rmsprop_context_free(ctx) };
}
