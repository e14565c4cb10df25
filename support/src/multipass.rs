//! The multi-pass baseline shared by `benches/step.rs` and `examples/roofline.rs`: what
//! `torch.optim.RMSprop`'s foreach path does for a plain step, one pass per tensor op and a
//! freshly allocated temporary `avg` (PyTorch allocates it every step), in the element type.

use rmsprop_simd::{Element, Hyperparameters};

/// One plain RMSprop step as five separate passes.
pub fn multi_pass_plain<T: Element>(
    hp: &Hyperparameters,
    params: &mut [T],
    grads: &[T],
    square_avg: &mut [T],
) {
    let alpha = T::from_f64(hp.alpha);
    let one_minus_alpha = T::from_f64(1.0 - hp.alpha);
    let eps = T::from_f64(hp.eps);
    let neg_lr = T::from_f64(-hp.lr);
    // _foreach_mul_(square_avgs, alpha)
    square_avg.iter_mut().for_each(|v| *v = *v * alpha);
    // _foreach_addcmul_(square_avgs, grads, grads, value=1-alpha)
    for (v, &g) in square_avg.iter_mut().zip(grads) {
        *v = *v + one_minus_alpha * g * g;
    }
    // avg = _foreach_sqrt(square_avgs): a new tensor (sqrt of the widened value rounds the same)
    let mut avg: Vec<T> = square_avg
        .iter()
        .map(|&v| T::from_f64(v.to_f64().sqrt()))
        .collect();
    // _foreach_add_(avg, eps)
    avg.iter_mut().for_each(|a| *a = *a + eps);
    // _foreach_addcdiv_(params, grads, avg, value=-lr)
    for ((p, &g), &a) in params.iter_mut().zip(grads).zip(&avg) {
        *p = *p + neg_lr * g / a;
    }
}
