//! The model-level optimizer: PyTorch resume, save/load round trip, multi-tensor vs per-tensor,
//! lazy state, and every error path (nothing modified).
#![cfg(feature = "safetensors")]

use rmsprop_simd::{
    Backend, Buffer, GroupKeyProblem, Hyperparameters, Kernel, OptimizerError, ParamGroup, RmsProp,
    StateFileError, Threading,
};
use rmsprop_simd_support::golden::relative_error;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn resume_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/torch-2.15-resume")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(resume_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn f32s(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Loads PyTorch's state after 5 steps, continues for steps 5..9 (with the missing gradients),
/// and matches PyTorch's state after step 9: parameters, every state buffer and step counts.
#[test]
#[cfg_attr(miri, ignore = "file I/O")]
fn resumes_pytorch_state_with_the_same_trajectory() {
    let start_bytes = read("start.safetensors");
    let grads_bytes = read("grads.safetensors");
    let expected_bytes = read("expected.safetensors");
    let groups_json = String::from_utf8(read("param_groups.json")).unwrap();
    let start = SafeTensors::deserialize(&start_bytes).unwrap();
    let grads = SafeTensors::deserialize(&grads_bytes).unwrap();
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
    let n = 5;
    let shapes: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            start
                .tensor(&format!("param.{i}"))
                .unwrap()
                .shape()
                .to_vec()
        })
        .collect();
    let params0: Vec<Vec<f32>> = (0..n)
        .map(|i| f32s(&start.tensor(&format!("param.{i}")).unwrap()))
        .collect();

    for backend in Backend::available() {
        for threading in [Threading::Serial, Threading::Parallel] {
            let kernel = Kernel::new()
                .with_backend(backend)
                .with_threading(threading)
                .with_parallel_min_len(128);
            let mut opt =
                RmsProp::<f32>::from_state(shapes.clone(), &start_bytes, Some(&groups_json))
                    .unwrap()
                    .with_kernel(kernel);
            assert_eq!(opt.param_groups().len(), 3);
            assert_eq!(
                opt.state(3).unwrap().step,
                4,
                "parameter 3 missed a gradient before the save"
            );
            let mut params = params0.clone();
            let mut missing = 0;
            for step in 5..10 {
                let g: Vec<Option<Vec<f32>>> = (0..n)
                    .map(|i| {
                        grads
                            .tensor(&format!("grad.{step}.{i}"))
                            .ok()
                            .map(|v| f32s(&v))
                    })
                    .collect();
                missing += g.iter().filter(|g| g.is_none()).count();
                let g_refs: Vec<Option<&[f32]>> = g.iter().map(|g| g.as_deref()).collect();
                let mut p_refs: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
                opt.step(&mut p_refs, &g_refs).unwrap();
            }
            assert!(missing > 0, "the set exercises missing gradients");
            let tol = 1e-5;
            let tiny = f32::MIN_POSITIVE as f64;
            for i in 0..n {
                let check = |what: &str, got: &[f32], start: &[f32]| {
                    let e = f32s(&expected.tensor(what).unwrap());
                    let err = relative_error(got, &e, start, tiny);
                    assert!(
                        err <= tol,
                        "{backend} {threading:?} {what}: relative error {err:e}"
                    );
                };
                check(&format!("param.{i}"), &params[i], &params0[i]);
                let st = opt.state(i).unwrap();
                let zeros = vec![0.0f32; st.square_avg.len()];
                check(&format!("state.{i}.square_avg"), &st.square_avg, &zeros);
                if let Some(b) = &st.grad_avg {
                    check(&format!("state.{i}.grad_avg"), b, &zeros);
                }
                if let Some(b) = &st.momentum_buffer {
                    check(&format!("state.{i}.momentum_buffer"), b, &zeros);
                }
                let step = f32s(&expected.tensor(&format!("state.{i}.step")).unwrap())[0];
                assert_eq!(st.step as f32, step, "tensor {i} step count");
                // every buffer PyTorch has, we have
                for field in ["grad_avg", "momentum_buffer"] {
                    let theirs = expected.tensor(&format!("state.{i}.{field}")).is_ok();
                    let ours = if field == "grad_avg" {
                        st.grad_avg.is_some()
                    } else {
                        st.momentum_buffer.is_some()
                    };
                    assert_eq!(ours, theirs, "tensor {i} {field} presence");
                }
            }
        }
    }
}

/// A small model: shapes of every size class, three groups with different variants.
fn model() -> (Vec<Vec<usize>>, Vec<ParamGroup>) {
    let shapes = vec![
        vec![64, 3, 7, 7],
        vec![64],
        vec![300, 70],
        vec![5],
        vec![1],
        vec![0],
        vec![1000, 37],
        vec![3, 3],
    ];
    let d = Hyperparameters::default();
    let groups = vec![
        ParamGroup {
            hyperparameters: Hyperparameters {
                momentum: 0.9,
                centered: true,
                weight_decay: 1e-4,
                ..d
            },
            params: vec![0, 2, 5],
            ..Default::default()
        },
        ParamGroup {
            hyperparameters: Hyperparameters {
                lr: 3e-3,
                alpha: 0.9,
                eps: 1e-6,
                ..d
            },
            params: vec![1, 3, 6],
            ..Default::default()
        },
        ParamGroup {
            hyperparameters: Hyperparameters {
                lr: 0.05,
                momentum: 0.5,
                maximize: true,
                ..d
            },
            params: vec![4, 7],
            ..Default::default()
        },
    ];
    (shapes, groups)
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn run_steps(opt: &mut RmsProp<f32>, params: &mut [Vec<f32>], steps: std::ops::Range<u64>) {
    let n = params.len();
    for s in steps {
        let grads: Vec<Option<Vec<f32>>> = (0..n)
            .map(|i| {
                if (s + i as u64) % 4 == 3 {
                    None
                } else {
                    Some(values(params[i].len(), s * 100 + i as u64))
                }
            })
            .collect();
        let g: Vec<Option<&[f32]>> = grads.iter().map(|g| g.as_deref()).collect();
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        opt.step(&mut p, &g).unwrap();
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `(square_avg, grad_avg, momentum_buffer, step)` of the per-tensor reference.
type PerTensor = (Vec<f32>, Vec<f32>, Vec<f32>, u64);

/// Every multi-tensor dispatch (serial, parallel with many small tasks, pools of 1..4 threads)
/// equals stepping each tensor alone with `Kernel::step`, bit for bit, including step counts.
#[test]
fn multi_tensor_step_equals_per_tensor_steps() {
    let (shapes, groups) = model();
    let n = shapes.len();
    let params0: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| values(s.iter().product(), 1000 + i as u64))
        .collect();
    // per-tensor reference with the plain kernel, serial
    let mut want = params0.clone();
    let mut state: Vec<PerTensor> = want
        .iter()
        .map(|p| {
            (
                vec![0.0; p.len()],
                vec![0.0; p.len()],
                vec![0.0; p.len()],
                0,
            )
        })
        .collect();
    let kernel = Kernel::new().with_threading(Threading::Serial);
    for s in 0..6u64 {
        for i in 0..n {
            if (s + i as u64) % 4 == 3 {
                continue;
            }
            let hp = groups
                .iter()
                .find(|g| g.params.contains(&i))
                .unwrap()
                .hyperparameters;
            let g = values(want[i].len(), s * 100 + i as u64);
            let (v, ga, b, step) = &mut state[i];
            let st = rmsprop_simd_support::state::state_for(&hp, v, ga, b);
            kernel.step(&hp, &mut want[i], &g, st).unwrap();
            *step += 1;
        }
    }
    for backend in Backend::available() {
        for threads in [1, 2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for min_len in [128, 4096, rmsprop_simd::PARALLEL_MIN_LEN] {
                let kernel = Kernel::new()
                    .with_backend(backend)
                    .with_parallel_min_len(min_len);
                let mut opt = RmsProp::<f32>::with_groups(shapes.clone(), groups.clone())
                    .unwrap()
                    .with_kernel(kernel);
                let mut got = params0.clone();
                pool.install(|| run_steps(&mut opt, &mut got, 0..6));
                for i in 0..n {
                    let what = format!("{backend} threads {threads} min_len {min_len} tensor {i}");
                    assert_eq!(bits(&got[i]), bits(&want[i]), "{what} params");
                    let st = opt.state(i).unwrap();
                    assert_eq!(bits(&st.square_avg), bits(&state[i].0), "{what} square_avg");
                    let (c, m) = groups
                        .iter()
                        .find(|g| g.params.contains(&i))
                        .unwrap()
                        .hyperparameters
                        .uses_state();
                    assert_eq!(
                        st.grad_avg.is_some(),
                        c,
                        "{what}: only the buffers the group uses"
                    );
                    assert_eq!(
                        st.momentum_buffer.is_some(),
                        m,
                        "{what}: only the buffers the group uses"
                    );
                    if c {
                        assert_eq!(
                            bits(st.grad_avg.as_ref().unwrap()),
                            bits(&state[i].1),
                            "{what} grad_avg"
                        );
                    }
                    if m {
                        assert_eq!(
                            bits(st.momentum_buffer.as_ref().unwrap()),
                            bits(&state[i].2),
                            "{what} momentum"
                        );
                    }
                    assert_eq!(st.step, state[i].3, "{what} step");
                }
            }
        }
    }
}

/// save -> load -> continue equals never saved, bit for bit; the file round-trips itself.
#[test]
fn save_load_continue_equals_uninterrupted() {
    let (shapes, groups) = model();
    let params0: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| values(s.iter().product(), 7 + i as u64))
        .collect();
    let mut straight = RmsProp::<f32>::with_groups(shapes.clone(), groups.clone()).unwrap();
    let mut p_straight = params0.clone();
    run_steps(&mut straight, &mut p_straight, 0..8);

    let mut first = RmsProp::<f32>::with_groups(shapes.clone(), groups).unwrap();
    let mut p = params0.clone();
    run_steps(&mut first, &mut p, 0..4);
    let file = first.save_state().unwrap();
    // groups from the file's own metadata
    let mut resumed = RmsProp::<f32>::from_state(shapes.clone(), &file, None).unwrap();
    assert_eq!(resumed.param_groups(), first.param_groups());
    // save(load(file)) holds the same tensors and metadata as file
    let again = resumed.save_state().unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&file).unwrap(),
        SafeTensors::deserialize(&again).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    let mut names_b = b.names();
    names_b.sort();
    assert_eq!(names, names_b);
    for name in names {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(
            (x.dtype(), x.shape(), x.data()),
            (y.dtype(), y.shape(), y.data()),
            "{name}"
        );
    }
    let meta = |buf: &[u8]| {
        SafeTensors::read_metadata(buf)
            .unwrap()
            .1
            .metadata()
            .clone()
    };
    assert_eq!(meta(&file), meta(&again));
    run_steps(&mut resumed, &mut p, 4..8);
    for i in 0..shapes.len() {
        assert_eq!(bits(&p[i]), bits(&p_straight[i]), "tensor {i}");
        assert_eq!(resumed.state(i), straight.state(i), "tensor {i} state");
    }
}

#[test]
fn state_is_lazy_and_untouched_without_gradient() {
    let mut opt = RmsProp::<f64>::new(
        vec![vec![3], vec![2]],
        Hyperparameters {
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    let (mut a, mut b) = (vec![1.0; 3], vec![2.0; 2]);
    assert!(opt.state(0).is_none() && opt.state(1).is_none());
    opt.step(&mut [&mut a, &mut b], &[Some(&[0.5; 3]), None])
        .unwrap();
    assert_eq!(opt.state(0).unwrap().step, 1);
    assert!(
        opt.state(0).unwrap().grad_avg.is_none(),
        "not centered: no grad_avg"
    );
    assert!(opt.state(1).is_none(), "no gradient yet: no state");
    assert_eq!(b, vec![2.0; 2], "no gradient: parameter untouched");
    // a group switched to centered later gets a zero grad_avg, as a fresh PyTorch state would
    opt.hyperparameters_mut(0).unwrap().centered = true;
    opt.step(&mut [&mut a, &mut b], &[Some(&[0.5; 3]), Some(&[0.1; 2])])
        .unwrap();
    assert!(opt.state(0).unwrap().grad_avg.is_some());
    assert_eq!(
        (opt.state(0).unwrap().step, opt.state(1).unwrap().step),
        (2, 1)
    );
}

/// A snapshot of everything an error must leave alone: state (values, step counts), groups and
/// parameters. (Not the saved bytes: safetensors writes its metadata map in hash order.)
type Snapshot = (
    Vec<Option<rmsprop_simd::TensorState<f32>>>,
    String,
    Vec<Vec<u32>>,
);
fn snapshot(opt: &RmsProp<f32>, params: &[Vec<f32>]) -> Snapshot {
    let state = (0..opt.len()).map(|i| opt.state(i).cloned()).collect();
    (
        state,
        opt.param_groups_json().unwrap(),
        params.iter().map(|p| bits(p)).collect(),
    )
}

#[test]
fn step_errors_modify_nothing() {
    let (shapes, groups) = model();
    let mut opt = RmsProp::<f32>::with_groups(shapes.clone(), groups).unwrap();
    let mut params: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| values(s.iter().product(), 3))
        .collect();
    run_steps(&mut opt, &mut params, 0..2);
    let before = snapshot(&opt, &params);
    let grads: Vec<Vec<f32>> = params.iter().map(|p| values(p.len(), 9)).collect();
    let try_step = |opt: &mut RmsProp<f32>,
                    params: &mut Vec<Vec<f32>>,
                    drop_param: bool,
                    bad_len: Option<usize>| {
        let mut g: Vec<Option<&[f32]>> = grads.iter().map(|g| Some(&g[..])).collect();
        if let Some(i) = bad_len {
            g[i] = Some(&grads[i][1..]);
        }
        let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
        if drop_param {
            p.pop();
        }
        opt.step(&mut p, &g)
    };
    let e = try_step(&mut opt, &mut params, true, None).unwrap_err();
    assert!(
        matches!(e, OptimizerError::TensorCount { what: "params", .. }),
        "{e}"
    );
    let e = try_step(&mut opt, &mut params, false, Some(6)).unwrap_err();
    assert!(
        matches!(
            &e,
            OptimizerError::ShapeChanged {
                tensor: 6,
                buffer: Buffer::Grads,
                ..
            }
        ),
        "{e}"
    );
    let mut wrong = params.clone();
    wrong[2].push(0.0);
    let e = try_step(&mut opt, &mut wrong, false, None).unwrap_err();
    assert!(
        matches!(
            &e,
            OptimizerError::ShapeChanged {
                tensor: 2,
                buffer: Buffer::Params,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(snapshot(&opt, &params), before);
    let e = opt.step(&mut [], &[]).unwrap_err();
    assert!(matches!(
        e,
        OptimizerError::TensorCount {
            expected: 8,
            actual: 0,
            ..
        }
    ));
    opt.hyperparameters_mut(1).unwrap().lr = f64::NAN;
    let e = try_step(&mut opt, &mut params, false, None).unwrap_err();
    assert!(
        matches!(e, OptimizerError::InvalidHyperparameter { group: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("lr"), "{e}");
    opt.hyperparameters_mut(1).unwrap().lr = 3e-3;
    assert_eq!(snapshot(&opt, &params), before, "errors changed nothing");
    assert!(opt.hyperparameters_mut(99).is_none());

    // construction errors
    let d = Hyperparameters::default();
    // a tensor in no group, a tensor twice, an index out of range
    for (shapes, params) in [
        (vec![vec![2], vec![3]], vec![0]),
        (vec![vec![2]], vec![0, 0]),
        (vec![vec![2]], vec![1]),
    ] {
        let groups = vec![ParamGroup {
            hyperparameters: d,
            params: params.clone(),
            ..Default::default()
        }];
        let e = RmsProp::<f32>::with_groups(shapes, groups).unwrap_err();
        assert!(
            matches!(e, OptimizerError::InvalidGroups(_)),
            "{params:?}: {e}"
        );
    }
    let e = RmsProp::<f32>::new(vec![vec![2]], Hyperparameters { lr: 1e300, ..d }).unwrap_err();
    assert!(
        matches!(e, OptimizerError::InvalidHyperparameter { group: 0, .. }),
        "{e}"
    );
}

/// One tensor of a hand-made state file: name, dtype, shape, little-endian bytes.
type Entry = (&'static str, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Builds a safetensors file from `(name, dtype, shape, bytes)`.
fn file(
    tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
    groups: Option<&str>,
) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = groups
        .map(|g| std::collections::HashMap::from([("param_groups".to_string(), g.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}

#[test]
fn bad_state_files_are_refused_and_change_nothing() {
    use safetensors::Dtype::{F32, F64, I64};
    let shapes = vec![vec![2, 2], vec![3]];
    let groups = r#"[{"lr":0.01,"alpha":0.99,"eps":1e-8,"weight_decay":0.0,"momentum":0.9,"centered":false,"maximize":false,"params":[0,1]}]"#;
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let good = vec![
        ("state.0.square_avg", F32, vec![2, 2], le(&[1.0; 4])),
        ("state.0.momentum_buffer", F32, vec![2, 2], le(&[0.5; 4])),
        ("state.0.step", F32, vec![], le(&[3.0])),
    ];
    let mut opt =
        RmsProp::<f32>::from_state(shapes.clone(), &file(&good, Some(groups)), None).unwrap();
    assert_eq!(opt.state(0).unwrap().step, 3);
    assert!(opt.state(1).is_none());
    let mut params = vec![vec![1.0f32; 4], vec![1.0f32; 3]];
    run_steps(&mut opt, &mut params, 0..1);
    let before = snapshot(&opt, &params);

    let with = |f: &dyn Fn(&mut Vec<Entry>)| {
        let mut t = good.clone();
        f(&mut t);
        file(&t, Some(groups))
    };
    let valid = file(&good, Some(groups));
    type Check = fn(&OptimizerError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("truncated", valid[..valid.len() - 3].to_vec(), |e| {
            matches!(e, OptimizerError::StateFile(StateFileError::Safetensors(_)))
        }),
        ("empty", vec![], |e| {
            matches!(e, OptimizerError::StateFile(StateFileError::Safetensors(_)))
        }),
        (
            "corrupted header",
            {
                let mut v = valid.clone();
                v[10] = b'{';
                v[11] = b'}';
                v
            },
            |e| matches!(e, OptimizerError::StateFile(StateFileError::Safetensors(_))),
        ),
        (
            "wrong dtype",
            with(&|t| t[0] = ("state.0.square_avg", F64, vec![2, 2], vec![0; 32])),
            |e| {
                matches!(
                    e,
                    OptimizerError::StateFile(StateFileError::WrongDtype {
                        expected: "F32",
                        ..
                    })
                )
            },
        ),
        (
            "wrong shape",
            with(&|t| t[0] = ("state.0.square_avg", F32, vec![4], le(&[1.0; 4]))),
            |e| {
                matches!(
                    e,
                    OptimizerError::ShapeChanged {
                        tensor: 0,
                        buffer: Buffer::SquareAvg,
                        ..
                    }
                )
            },
        ),
        (
            "missing square_avg",
            with(&|t| {
                t.remove(0);
            }),
            |e| {
                matches!(
                    e,
                    OptimizerError::StateFile(StateFileError::MissingBuffer {
                        tensor: 0,
                        buffer: Buffer::SquareAvg
                    })
                )
            },
        ),
        (
            "missing step",
            with(&|t| {
                t.remove(2);
            }),
            |e| {
                matches!(
                    e,
                    OptimizerError::StateFile(StateFileError::MissingStep { tensor: 0 })
                )
            },
        ),
        (
            "unknown key",
            with(&|t| t.push(("state.0.exp_avg", F32, vec![2, 2], le(&[0.0; 4])))),
            |e| matches!(e, OptimizerError::StateFile(StateFileError::UnknownTensor { name }) if name == "state.0.exp_avg"),
        ),
        (
            "unknown top-level key",
            with(&|t| t.push(("optimizer.lr", F32, vec![], le(&[0.0])))),
            |e| {
                matches!(
                    e,
                    OptimizerError::StateFile(StateFileError::UnknownTensor { .. })
                )
            },
        ),
        (
            "tensor out of range",
            with(&|t| t.push(("state.7.step", F32, vec![], le(&[1.0])))),
            |e| {
                matches!(
                    e,
                    OptimizerError::StateFile(StateFileError::TensorOutOfRange { tensors: 2, .. })
                )
            },
        ),
        (
            "NaN step",
            with(&|t| t[2] = ("state.0.step", F32, vec![], le(&[f32::NAN]))),
            |e| {
                matches!(
                    e,
                    OptimizerError::StateFile(StateFileError::StepValue { .. })
                )
            },
        ),
        (
            "fractional step",
            with(&|t| t[2] = ("state.0.step", F32, vec![], le(&[1.5]))),
            |e| matches!(e, OptimizerError::StateFile(StateFileError::StepValue { value, .. }) if *value == 1.5),
        ),
        (
            "integer-typed step",
            with(&|t| t[2] = ("state.0.step", I64, vec![], vec![0; 8])),
            |e| {
                matches!(
                    e,
                    OptimizerError::StateFile(StateFileError::StepNotScalar { .. })
                )
            },
        ),
    ];
    for (what, bytes, check) in cases {
        let err = opt.load_state(&bytes, None).unwrap_err();
        assert!(check(&err), "{what}: {err:?}");
        assert_eq!(
            snapshot(&opt, &params),
            before,
            "{what}: the optimizer changed"
        );
    }
    // bad param_groups JSON, with a valid file
    let cases: Vec<(&str, &str, Check)> = vec![
        ("not JSON", "{", |e| {
            matches!(
                e,
                OptimizerError::StateFile(StateFileError::ParamGroupsJson(_))
            )
        }),
        (
            "unknown group key",
            r#"[{"lr":0.01,"alpha":0.99,"eps":1e-8,"weight_decay":0,"momentum":0.9,"centered":false,"maximize":false,"params":[0,1],"betas":[1]}]"#,
            |e| matches!(e, OptimizerError::StateFile(StateFileError::GroupKey { group: 0, key, problem: GroupKeyProblem::Unknown }) if key == "betas"),
        ),
        (
            "missing field",
            r#"[{"lr":0.01,"params":[0,1]}]"#,
            |e| matches!(e, OptimizerError::StateFile(StateFileError::GroupKey { key, problem: GroupKeyProblem::Missing, .. }) if key == "alpha"),
        ),
        (
            "tensor in no group",
            r#"[{"lr":0.01,"alpha":0.99,"eps":1e-8,"weight_decay":0,"momentum":0.9,"centered":false,"maximize":false,"params":[0]}]"#,
            |e| matches!(e, OptimizerError::InvalidGroups(_)),
        ),
        (
            "invalid lr",
            r#"[{"lr":-1,"alpha":0.99,"eps":1e-8,"weight_decay":0,"momentum":0.9,"centered":false,"maximize":false,"params":[0,1]}]"#,
            |e| {
                matches!(
                    e,
                    OptimizerError::InvalidHyperparameter {
                        group: 0,
                        error: rmsprop_simd::Error::InvalidHyperparameter { name: "lr", .. }
                    }
                )
            },
        ),
    ];
    for (what, json, check) in cases {
        let err = opt.load_state(&valid, Some(json)).unwrap_err();
        assert!(check(&err), "{what}: {err:?}");
        assert_eq!(
            snapshot(&opt, &params),
            before,
            "{what}: the optimizer changed"
        );
    }
    let err = opt.load_state(&file(&good, None), None).unwrap_err();
    assert!(
        matches!(
            err,
            OptimizerError::StateFile(StateFileError::NoParamGroups)
        ),
        "{err:?}"
    );
    // an f64 optimizer refuses the f32 file
    let err = RmsProp::<f64>::from_state(shapes, &valid, None).unwrap_err();
    assert!(
        matches!(
            err,
            OptimizerError::StateFile(StateFileError::WrongDtype {
                expected: "F64",
                ..
            })
        ),
        "{err:?}"
    );
}

/// Complex tensors go through a zero-copy real view and step like PyTorch's `view_as_real`.
#[cfg(feature = "num-complex")]
#[test]
fn complex_tensors_step_as_interleaved_reals() {
    use num_complex::Complex;
    use rmsprop_simd::complex::{view_as_real, view_as_real_mut};
    let hp = Hyperparameters {
        momentum: 0.9,
        centered: true,
        ..Default::default()
    };
    let mut z: Vec<Complex<f32>> = (0..37)
        .map(|i| Complex::new(i as f32 * 0.1, -(i as f32) * 0.05))
        .collect();
    let gz: Vec<Complex<f32>> = (0..37)
        .map(|i| Complex::new(0.3 - i as f32 * 0.01, 0.02 * i as f32))
        .collect();
    let mut reals: Vec<f32> = z.iter().flat_map(|c| [c.re, c.im]).collect();
    let greals: Vec<f32> = gz.iter().flat_map(|c| [c.re, c.im]).collect();
    let ptr = z.as_ptr() as *const f32;
    assert_eq!(view_as_real_mut(&mut z).as_ptr(), ptr, "a view, not a copy");
    let mut opt_c = RmsProp::<f32>::new(vec![vec![37, 2]], hp).unwrap();
    let mut opt_r = RmsProp::<f32>::new(vec![vec![74]], hp).unwrap();
    for _ in 0..3 {
        opt_c
            .step(&mut [view_as_real_mut(&mut z)], &[Some(view_as_real(&gz))])
            .unwrap();
        opt_r.step(&mut [&mut reals], &[Some(&greals)]).unwrap();
    }
    assert_eq!(bits(view_as_real(&z)), bits(&reals));
}

/// `RmsProp` over 16-bit storage: bf16 params, gradients and state (nearest-even and
/// stochastic), and f32 master weights with bf16 gradients, equal `Kernel::step_with` per tensor
/// bit for bit over several steps with missing gradients, serial and parallel; the state saves
/// as BF16 safetensors, loads back to the same trajectory, and is refused by an f32 optimizer.
#[test]
fn sixteen_bit_state_and_gradients() {
    use rmsprop_simd::{bf16, Rounding, State, StepOptions};
    let (shapes, groups) = model();
    let n = shapes.len();
    let lens: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let to16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<bf16>>();
    for rounding in [
        Rounding::NearestEven,
        Rounding::Stochastic { seed: 11, step: 0 },
    ] {
        let options = StepOptions {
            rounding,
            ..StepOptions::default()
        };
        for kernel in [
            Kernel::new().with_threading(Threading::Serial),
            Kernel::new()
                .with_threading(Threading::Parallel)
                .with_parallel_min_len(1024),
        ] {
            let mut opt = RmsProp::<bf16>::with_groups(shapes.clone(), groups.clone())
                .unwrap()
                .with_kernel(kernel);
            let mut params: Vec<Vec<bf16>> = (0..n)
                .map(|i| to16(values(lens[i], 7 + i as u64)))
                .collect();
            // the per-tensor reference: (params, square_avg, grad_avg, momentum_buffer, step)
            type Reference = (Vec<bf16>, Vec<bf16>, Vec<bf16>, Vec<bf16>, u64);
            let mut refs: Vec<Reference> = params
                .iter()
                .map(|p| {
                    let z = vec![bf16::ZERO; p.len()];
                    (p.clone(), z.clone(), z.clone(), z, 0)
                })
                .collect();
            for s in 0..4u64 {
                let grads: Vec<Option<Vec<bf16>>> = (0..n)
                    .map(|i| {
                        ((s + i as u64) % 4 != 3).then(|| to16(values(lens[i], s * 100 + i as u64)))
                    })
                    .collect();
                let g: Vec<Option<&[bf16]>> = grads.iter().map(|g| g.as_deref()).collect();
                let mut p: Vec<&mut [bf16]> = params.iter_mut().map(|p| &mut p[..]).collect();
                opt.step_with(&mut p, &g, &options).unwrap();
                for (i, r) in refs.iter_mut().enumerate() {
                    let Some(g) = &grads[i] else { continue };
                    let group = groups.iter().find(|gr| gr.params.contains(&i)).unwrap();
                    let hp = group.hyperparameters;
                    let (centered, momentum) = hp.uses_state();
                    r.4 += 1;
                    let o = StepOptions {
                        rounding: match rounding {
                            Rounding::Stochastic { seed, .. } => Rounding::Stochastic {
                                seed: seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                                step: r.4,
                            },
                            r => r,
                        },
                        ..StepOptions::default()
                    };
                    let mut st = State::new(&mut r.1[..]);
                    if centered {
                        st = st.with_grad_avg(&mut r.2[..]);
                    }
                    if momentum {
                        st = st.with_momentum_buffer(&mut r.3[..]);
                    }
                    Kernel::new()
                        .with_backend(Backend::scalar())
                        .step_with(
                            &Hyperparameters { step: r.4, ..hp },
                            &o,
                            &mut r.0,
                            g,
                            st,
                            None,
                        )
                        .unwrap();
                }
            }
            let b16 = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
            for (i, r) in refs.iter().enumerate() {
                assert_eq!(b16(&params[i]), b16(&r.0), "params {i} ({rounding:?})");
                let st = opt.state(i).unwrap();
                assert_eq!(st.step, r.4);
                assert_eq!(b16(&st.square_avg), b16(&r.1), "square_avg {i}");
                if let Some(ga) = &st.grad_avg {
                    assert_eq!(b16(ga), b16(&r.2), "grad_avg {i}");
                }
                if let Some(b) = &st.momentum_buffer {
                    assert_eq!(b16(b), b16(&r.3), "momentum_buffer {i}");
                }
            }
            // BF16 in the file; a round trip continues identically; f32 refuses it
            let file = opt.save_state().unwrap();
            let st = SafeTensors::deserialize(&file).unwrap();
            assert_eq!(
                st.tensor("state.0.square_avg").unwrap().dtype(),
                safetensors::Dtype::BF16
            );
            let mut resumed = RmsProp::<bf16>::from_state(shapes.clone(), &file, None)
                .unwrap()
                .with_kernel(kernel);
            let mut p1 = params.clone();
            let mut p2 = params.clone();
            let g: Vec<Vec<bf16>> = (0..n)
                .map(|i| to16(values(lens[i], 999 + i as u64)))
                .collect();
            let gs: Vec<Option<&[bf16]>> = g.iter().map(|g| Some(&g[..])).collect();
            opt.step_with(
                &mut p1.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
                &gs,
                &options,
            )
            .unwrap();
            resumed
                .step_with(
                    &mut p2.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
                    &gs,
                    &options,
                )
                .unwrap();
            assert_eq!(p1, p2);
            assert!(matches!(
                RmsProp::<f32>::from_state(shapes.clone(), &file, None),
                Err(OptimizerError::StateFile(StateFileError::WrongDtype { .. }))
            ));
        }
    }
    // f32 master weights and state, bf16 gradients: as the f32 step on the widened gradients
    let mut opt = RmsProp::<f32>::with_groups(shapes.clone(), groups.clone()).unwrap();
    let mut twin = RmsProp::<f32>::with_groups(shapes.clone(), groups.clone()).unwrap();
    let mut p1: Vec<Vec<f32>> = (0..n).map(|i| values(lens[i], 3 + i as u64)).collect();
    let mut p2 = p1.clone();
    for s in 0..3u64 {
        let g16: Vec<Vec<bf16>> = (0..n)
            .map(|i| to16(values(lens[i], s + 50 * i as u64)))
            .collect();
        let g32: Vec<Vec<f32>> = g16
            .iter()
            .map(|g| g.iter().map(|x| x.to_f32()).collect())
            .collect();
        let a: Vec<Option<&[bf16]>> = g16.iter().map(|g| Some(&g[..])).collect();
        let b: Vec<Option<&[f32]>> = g32.iter().map(|g| Some(&g[..])).collect();
        opt.step_with(
            &mut p1.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
            &a,
            &StepOptions::default(),
        )
        .unwrap();
        twin.step(
            &mut p2.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
            &b,
        )
        .unwrap();
    }
    for i in 0..n {
        assert_eq!(bits(&p1[i]), bits(&p2[i]), "master params {i}");
    }
    // invalid options are refused before anything is written
    let before = p1.clone();
    let g: Vec<Vec<f32>> = (0..n).map(|i| values(lens[i], 1)).collect();
    let gs: Vec<Option<&[f32]>> = g.iter().map(|g| Some(&g[..])).collect();
    let bad = StepOptions {
        grad_scale: -1.0,
        ..StepOptions::default()
    };
    let e = opt.step_with(
        &mut p1.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
        &gs,
        &bad,
    );
    assert!(matches!(e, Err(OptimizerError::InvalidOptions(_))), "{e:?}");
    assert_eq!(p1, before);
}

/// `RmsProp::step_with_copies`: f32 master weights and state, bf16 gradients, a bf16 or f16
/// copy per tensor (one tensor without), over steps with missing gradients, serial and parallel:
/// the parameters and state equal `step_with` without copies, bit for bit, and every copy is
/// its tensor's new parameters rounded to nearest (a tensor without a gradient keeps its copy).
/// Wrong copy counts and lengths, and copies of f64 parameters, are refused before writing.
#[test]
fn master_weights_with_sixteen_bit_copies() {
    use rmsprop_simd::{bf16, f16, ParamsCopy, StepOptions};
    let (shapes, groups) = model();
    let n = shapes.len();
    let lens: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let to16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<bf16>>();
    for kernel in [
        Kernel::new().with_threading(Threading::Serial),
        Kernel::new()
            .with_threading(Threading::Parallel)
            .with_parallel_min_len(1024),
    ] {
        let mut opt = RmsProp::<f32>::with_groups(shapes.clone(), groups.clone())
            .unwrap()
            .with_kernel(kernel);
        let mut twin = opt.clone();
        let mut p1: Vec<Vec<f32>> = (0..n).map(|i| values(lens[i], 5 + i as u64)).collect();
        let mut p2 = p1.clone();
        let mut c16: Vec<Vec<bf16>> = lens
            .iter()
            .map(|&l| vec![bf16::from_bits(0x5555); l])
            .collect();
        let mut h16: Vec<Vec<f16>> = lens
            .iter()
            .map(|&l| vec![f16::from_bits(0x5555); l])
            .collect();
        for s in 0..3u64 {
            let g: Vec<Option<Vec<bf16>>> = (0..n)
                .map(|i| ((s + i as u64) % 3 != 2).then(|| to16(values(lens[i], s * 7 + i as u64))))
                .collect();
            let gs: Vec<Option<&[bf16]>> = g.iter().map(|g| g.as_deref()).collect();
            let before = (c16.clone(), h16.clone());
            // tensor i: bf16 copy when i % 3 == 0, f16 when 1, none when 2
            let copies = c16
                .iter_mut()
                .zip(h16.iter_mut())
                .enumerate()
                .map(|(i, (c, h))| match i % 3 {
                    0 => Some(ParamsCopy::from(&mut c[..])),
                    1 => Some(ParamsCopy::from(&mut h[..])),
                    _ => None,
                })
                .collect();
            let options = StepOptions {
                grad_scale: 8.0,
                ..StepOptions::default()
            };
            opt.step_with_copies(
                &mut p1.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
                &gs,
                copies,
                &options,
            )
            .unwrap();
            twin.step_with(
                &mut p2.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
                &gs,
                &options,
            )
            .unwrap();
            for i in 0..n {
                assert_eq!(bits(&p1[i]), bits(&p2[i]), "params {i}, step {s}");
                let st = (opt.state(i), twin.state(i));
                assert_eq!(
                    st.0.map(|s| bits(&s.square_avg)),
                    st.1.map(|s| bits(&s.square_avg))
                );
                let stepped = g[i].is_some();
                let want_c: Vec<u16> = if stepped && i % 3 == 0 {
                    p1[i].iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
                } else {
                    before.0[i].iter().map(|x| x.to_bits()).collect()
                };
                let want_h: Vec<u16> = if stepped && i % 3 == 1 {
                    p1[i].iter().map(|&x| f16::from_f32(x).to_bits()).collect()
                } else {
                    before.1[i].iter().map(|x| x.to_bits()).collect()
                };
                let got_c: Vec<u16> = c16[i].iter().map(|x| x.to_bits()).collect();
                let got_h: Vec<u16> = h16[i].iter().map(|x| x.to_bits()).collect();
                assert_eq!(got_c, want_c, "bf16 copy {i}, step {s}");
                assert_eq!(got_h, want_h, "f16 copy {i}, step {s}");
            }
        }
    }
    // refused before anything is written
    let mut opt = RmsProp::<f32>::with_groups(shapes.clone(), groups.clone()).unwrap();
    let mut p: Vec<Vec<f32>> = (0..n).map(|i| values(lens[i], 1)).collect();
    let g: Vec<Vec<f32>> = (0..n).map(|i| values(lens[i], 2)).collect();
    let gs: Vec<Option<&[f32]>> = g.iter().map(|g| Some(&g[..])).collect();
    let before = p.clone();
    let mut c: Vec<Vec<bf16>> = lens.iter().map(|&l| vec![bf16::ZERO; l + 1]).collect();
    for case in 0..2 {
        let copies: Vec<Option<ParamsCopy>> = c
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                let len = if case == 1 && i == n - 1 {
                    lens[i] + 1
                } else {
                    lens[i]
                };
                Some(ParamsCopy::from(&mut c[..len]))
            })
            .take(if case == 0 { n - 1 } else { n })
            .collect();
        let e = opt.step_with_copies(
            &mut p.iter_mut().map(|p| &mut p[..]).collect::<Vec<_>>(),
            &gs,
            copies,
            &StepOptions::default(),
        );
        match case {
            0 => assert!(
                matches!(
                    e,
                    Err(OptimizerError::TensorCount {
                        what: "params_copies",
                        ..
                    })
                ),
                "{e:?}"
            ),
            _ => assert!(
                matches!(
                    e,
                    Err(OptimizerError::ShapeChanged {
                        buffer: rmsprop_simd::Buffer::ParamsCopy,
                        ..
                    })
                ),
                "{e:?}"
            ),
        }
        assert_eq!(p, before);
        assert!(c.iter().all(|c| c.iter().all(|x| *x == bf16::ZERO)));
        assert!(opt.state(0).is_none());
    }
    let mut opt = RmsProp::<f64>::new(vec![vec![4]], Hyperparameters::default()).unwrap();
    let (mut w, gw, mut cw) = (vec![1.0f64; 4], vec![0.5f64; 4], vec![bf16::ZERO; 4]);
    let e = opt.step_with_copies(
        &mut [&mut w],
        &[Some(&gw)],
        vec![Some(ParamsCopy::from(&mut cw[..]))],
        &StepOptions::default(),
    );
    assert!(
        matches!(
            e,
            Err(OptimizerError::InvalidOptions(
                rmsprop_simd::Error::Unsupported { .. }
            ))
        ),
        "{e:?}"
    );
    assert_eq!(w, vec![1.0f64; 4]);
    assert!(opt.state(0).is_none());
}
