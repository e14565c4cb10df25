//! The C ABI's Rust side, called as C would call it (also under miri: the serial tests under
//! Stacked Borrows, the pool tests under Tree Borrows, as rayon needs).

use super::*;
use rmsprop::reference;

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
