//! State-file fuzzing: `from_state` / `load_state` on arbitrary bytes, on byte-edited valid
//! files, and with arbitrary `param_groups` JSON. Loading must never panic; on error the
//! optimizer is unchanged (state, groups); on success, saving and loading again gives the same
//! optimizer, and saving twice gives the same bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rmsprop_simd::{Hyperparameters, ParamGroup, RmsProp};

#[derive(Arbitrary, Debug)]
struct Input {
    double: bool,
    /// Start from a file this crate wrote (then edited) rather than from `raw`.
    from_valid: bool,
    /// Which hyperparameters the valid file's group has.
    centered: bool,
    momentum: bool,
    /// `(position, byte)` edits applied to the valid file.
    edits: Vec<(u16, u8)>,
    raw: Vec<u8>,
    json: Option<String>,
}

const SHAPES: [&[usize]; 3] = [&[3, 2], &[5], &[]];

fn shapes() -> Vec<Vec<usize>> {
    SHAPES.iter().map(|s| s.to_vec()).collect()
}

/// An optimizer with state on tensors 0 and 2 (tensor 1 never had a gradient).
fn stepped<T: rmsprop_simd::Element>(centered: bool, momentum: bool) -> RmsProp<T> {
    let hp = Hyperparameters {
        centered,
        momentum: if momentum { 0.9 } else { 0.0 },
        ..Default::default()
    };
    let mut groups = vec![
        ParamGroup::new(hp, vec![0, 2]),
        ParamGroup::new(Hyperparameters::default(), vec![1]),
    ];
    groups[0].extra.insert("initial_lr".into(), 0.01);
    let mut opt = RmsProp::<T>::with_groups(shapes(), groups).unwrap();
    let mut p: Vec<Vec<T>> = SHAPES
        .iter()
        .map(|s| vec![T::from_f64(0.5); s.iter().product()])
        .collect();
    let g: Vec<Vec<T>> = SHAPES
        .iter()
        .map(|s| vec![T::from_f64(0.25); s.iter().product()])
        .collect();
    let mut pr: Vec<&mut [T]> = p.iter_mut().map(|p| &mut p[..]).collect();
    opt.step(&mut pr, &[Some(&g[0]), None, Some(&g[2])])
        .unwrap();
    opt
}

fn snapshot<T: rmsprop_simd::Element>(
    opt: &RmsProp<T>,
) -> (Vec<Option<Vec<u64>>>, Vec<u64>, Vec<ParamGroup>) {
    let bits = |v: &[T]| v.iter().map(|x| x.to_bits_u64()).collect::<Vec<u64>>();
    let state = (0..opt.len())
        .map(|i| {
            opt.state(i).map(|s| {
                let mut all = bits(&s.square_avg);
                all.push(u64::MAX);
                all.extend(s.grad_avg.as_deref().map(bits).unwrap_or_default());
                all.push(u64::MAX);
                all.extend(s.momentum_buffer.as_deref().map(bits).unwrap_or_default());
                all
            })
        })
        .collect();
    let steps = (0..opt.len())
        .map(|i| opt.state(i).map_or(u64::MAX, |s| s.step))
        .collect();
    (state, steps, opt.param_groups().to_vec())
}

fn run<T: rmsprop_simd::Element>(input: &Input) {
    let mut opt = stepped::<T>(input.centered, input.momentum);
    let file = if input.from_valid {
        let mut f = opt.save_state().unwrap();
        for &(pos, byte) in &input.edits {
            if !f.is_empty() {
                let i = pos as usize % f.len();
                f[i] = byte;
            }
        }
        f
    } else {
        input.raw.clone()
    };
    let json = input.json.as_deref();
    // from_state: never panics; a success must round-trip
    if let Ok(loaded) = RmsProp::<T>::from_state(shapes(), &file, json) {
        round_trip(&loaded);
    }
    let before = snapshot(&opt);
    match opt.load_state(&file, json) {
        Ok(()) => round_trip(&opt),
        Err(_) => assert!(
            snapshot(&opt) == before,
            "a refused load changed the optimizer"
        ),
    }
}

fn round_trip<T: rmsprop_simd::Element>(opt: &RmsProp<T>) {
    let saved = opt.save_state().expect("a loaded state saves");
    assert_eq!(opt.save_state().unwrap(), saved, "saving is deterministic");
    let again = RmsProp::<T>::from_state(shapes(), &saved, None).expect("what save writes loads");
    assert_eq!(again.param_groups(), opt.param_groups(), "groups survive");
    let bits = |v: &[T]| v.iter().map(|x| x.to_bits_u64()).collect::<Vec<u64>>();
    for i in 0..opt.len() {
        let (Some(a), Some(b)) = (again.state(i), opt.state(i)) else {
            assert_eq!(
                again.state(i).is_some(),
                opt.state(i).is_some(),
                "state presence"
            );
            continue;
        };
        assert_eq!(a.step, b.step, "step survives");
        assert_eq!(
            bits(&a.square_avg),
            bits(&b.square_avg),
            "square_avg survives"
        );
        for (x, y) in [
            (&a.grad_avg, &b.grad_avg),
            (&a.momentum_buffer, &b.momentum_buffer),
        ] {
            match (x, y) {
                (Some(x), Some(y)) => assert_eq!(bits(x), bits(y), "buffer survives"),
                // a buffer the group needs but the state lacked is saved as the zeros the
                // next step would start it from
                (Some(x), None) => assert!(x.iter().all(|v| v.to_bits_u64() == 0)),
                (None, Some(_)) => panic!("a buffer was lost"),
                (None, None) => {}
            }
        }
    }
}

fuzz_target!(|input: Input| {
    if input.double {
        run::<f64>(&input)
    } else {
        run::<f32>(&input)
    }
});
