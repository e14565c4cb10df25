//! Complex tensors, stepped as PyTorch does (`view_as_real`: real and imaginary parts are
//! independent elements), through zero-copy casts. Needs neither `std` nor allocation.

use crate::Element;
use num_complex::Complex;

/// `[re0, im0, re1, im1, ...]` over the same memory (no copy): give the optimizer this view,
/// with the tensor registered as twice as many real elements (shape `[.., 2]`, as
/// `torch.view_as_real`).
///
/// ```
/// use num_complex::Complex;
/// let z = [Complex::new(1.0f32, 2.0), Complex::new(3.0, 4.0)];
/// assert_eq!(rmsprop_simd::complex::view_as_real(&z), &[1.0, 2.0, 3.0, 4.0]);
/// ```
pub fn view_as_real<T: Element>(values: &[Complex<T>]) -> &[T] {
    bytemuck::cast_slice(values)
}

/// Mutable [`view_as_real`].
pub fn view_as_real_mut<T: Element>(values: &mut [Complex<T>]) -> &mut [T] {
    bytemuck::cast_slice_mut(values)
}
