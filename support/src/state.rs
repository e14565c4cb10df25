//! Owned state buffers, and the [`State`] that given hyperparameters need (the block of
//! `State::new(..).with_grad_avg(..).with_momentum_buffer(..)` that every caller would
//! otherwise write by hand).

use rmsprop_simd::{Element, Hyperparameters, State};
use std::ops::Range;

/// Every state buffer, allocated whether or not the hyperparameters use it.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedState<T> {
    /// `square_avg`.
    pub square_avg: Vec<T>,
    /// `grad_avg`.
    pub grad_avg: Vec<T>,
    /// `momentum_buffer`.
    pub momentum_buffer: Vec<T>,
}

impl<T: Element> OwnedState<T> {
    /// Zeros of length `len`, as PyTorch starts them.
    pub fn zeros(len: usize) -> Self {
        OwnedState {
            square_avg: vec![T::default(); len],
            grad_avg: vec![T::default(); len],
            momentum_buffer: vec![T::default(); len],
        }
    }

    /// The state `hp` needs, over the whole buffers.
    pub fn state(&mut self, hp: &Hyperparameters) -> State<'_, T> {
        let len = self.square_avg.len();
        self.state_range(hp, 0..len)
    }

    /// The state `hp` needs, over `range` of each buffer.
    pub fn state_range(&mut self, hp: &Hyperparameters, range: Range<usize>) -> State<'_, T> {
        state_for(
            hp,
            &mut self.square_avg[range.clone()],
            &mut self.grad_avg[range.clone()],
            &mut self.momentum_buffer[range],
        )
    }
}

/// `square_avg`, plus `grad_avg` when `hp.centered` and `momentum_buffer` when `hp.momentum > 0`.
pub fn state_for<'a, T>(
    hp: &Hyperparameters,
    square_avg: &'a mut [T],
    grad_avg: &'a mut [T],
    momentum_buffer: &'a mut [T],
) -> State<'a, T> {
    let (centered, momentum) = hp.uses_state();
    let mut state = State::new(square_avg);
    if centered {
        state = state.with_grad_avg(grad_avg);
    }
    if momentum {
        state = state.with_momentum_buffer(momentum_buffer);
    }
    state
}
