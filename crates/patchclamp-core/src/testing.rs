//! Helpers for tests of patchclamp and of crates built on it.

use candle_core::Tensor;

/// The largest `|a − b|` over all elements (shapes must hold the same number): infinities
/// that coincide count as 0 (masked attention scores), others as infinity, and a NaN on
/// either side makes the result NaN so that no tolerance passes it.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let flat = |t: &Tensor| -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1())
            .expect("a tensor readable as f32")
    };
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len(), "max_diff of tensors of different sizes");
    a.iter().zip(&b).fold(0f32, |m, (x, y)| {
        let d = if x.is_nan() || y.is_nan() {
            f32::NAN
        } else if x.is_infinite() || y.is_infinite() {
            if x == y {
                0.0
            } else {
                f32::INFINITY
            }
        } else {
            (x - y).abs()
        };
        if d.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_largest_gap_and_refuses_nan() {
        let dev = candle_core::Device::Cpu;
        let t = |v: &[f32]| Tensor::new(v, &dev).unwrap();
        assert_eq!(max_diff(&t(&[1.0, 2.0]), &t(&[1.5, 2.0])), 0.5);
        let inf = f32::NEG_INFINITY;
        assert_eq!(max_diff(&t(&[inf, 1.0]), &t(&[inf, 1.0])), 0.0);
        assert_eq!(max_diff(&t(&[inf]), &t(&[0.0])), f32::INFINITY);
        assert!(max_diff(&t(&[f32::NAN]), &t(&[0.0])).is_nan());
    }
}
