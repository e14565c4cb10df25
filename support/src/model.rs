//! The two sides of the whole-model comparison, shared by `benches/model.rs` and
//! `examples/model_step.rs`: every tensor of a shape list stepped through `RmsProp`, and the
//! same number of elements in one contiguous buffer stepped by the kernel.

use crate::state::OwnedState;
use crate::workloads::fill;
use rmsprop_simd::{Hyperparameters, Kernel, RmsProp};

/// One parameter and one gradient buffer per tensor, stepped through an `RmsProp`.
pub struct Tensors {
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    opt: RmsProp<f32>,
}

impl Tensors {
    pub fn new(lens: &[usize], hp: Hyperparameters, kernel: Kernel) -> Self {
        let params = lens.iter().enumerate().map(|(i, &n)| fill(n, i)).collect();
        let grads = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| fill(n, i + 500))
            .collect();
        let shapes = lens.iter().map(|&n| vec![n]).collect();
        let opt = RmsProp::<f32>::new(shapes, hp).unwrap().with_kernel(kernel);
        Tensors { params, grads, opt }
    }

    pub fn step(&mut self) {
        let mut p: Vec<&mut [f32]> = self.params.iter_mut().map(|p| &mut p[..]).collect();
        let g: Vec<Option<&[f32]>> = self.grads.iter().map(|g| Some(&g[..])).collect();
        self.opt.step(&mut p, &g).unwrap();
    }
}

/// `total` elements in one buffer per array, with every state buffer allocated.
pub struct Contiguous {
    params: Vec<f32>,
    grads: Vec<f32>,
    state: OwnedState<f32>,
    hp: Hyperparameters,
    kernel: Kernel,
}

impl Contiguous {
    pub fn new(total: usize, hp: Hyperparameters, kernel: Kernel) -> Self {
        Contiguous {
            params: fill(total, 1),
            grads: fill(total, 2),
            state: OwnedState::zeros(total),
            hp,
            kernel,
        }
    }

    pub fn step(&mut self) {
        let state = self.state.state(&self.hp);
        self.kernel
            .step(&self.hp, &mut self.params, &self.grads, state)
            .unwrap();
    }
}
