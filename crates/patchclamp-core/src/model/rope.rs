//! Rotary position embeddings (the "rotate half" layout of GPT-NeoX / Llama), with scaling.

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;
use crate::model::config::{Rope, RopeScaling};

/// Inverse frequencies `1/θ^(2i/rotary_dim)`, rescaled as the config says.
pub fn inv_freq(rope: &Rope) -> Vec<f64> {
    let dim = rope.rotary_dim;
    let base: Vec<f64> = (0..dim / 2)
        .map(|i| 1.0 / rope.theta.powf((2 * i) as f64 / dim as f64))
        .collect();
    match &rope.scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// `cos` and `sin` tables for position ids `[batch, pos]`, each `[batch, pos, 1, rotary_dim]`.
pub fn tables(rope: &Rope, position_ids: &Tensor, device: &Device) -> Result<(Tensor, Tensor)> {
    let freqs: Vec<f32> = inv_freq(rope).iter().map(|&f| f as f32).collect();
    let n = freqs.len();
    let freqs = Tensor::from_vec(freqs, (1, 1, n), device)?;
    let pos = position_ids.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // [b, s, 1]
    let angles = pos.broadcast_mul(&freqs)?; // [b, s, rd/2]
    let angles = Tensor::cat(&[&angles, &angles], D::Minus1)?.unsqueeze(2)?; // [b, s, 1, rd]
    Ok((angles.cos()?, angles.sin()?))
}

/// Rotates the first `rotary_dim` features of `x` `[batch, pos, heads, d_head]`.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d_head = x.dim(D::Minus1)?;
    let rd = cos.dim(D::Minus1)?;
    let (rot, pass) = if rd == d_head {
        (x.clone(), None)
    } else {
        (
            x.narrow(D::Minus1, 0, rd)?,
            Some(x.narrow(D::Minus1, rd, d_head - rd)?),
        )
    };
    let half = rd / 2;
    let x1 = rot.narrow(D::Minus1, 0, half)?;
    let x2 = rot.narrow(D::Minus1, half, half)?;
    let rotated_half = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let out = (rot.broadcast_mul(cos)? + rotated_half.broadcast_mul(sin)?)?;
    Ok(match pass {
        Some(p) => Tensor::cat(&[&out, &p], D::Minus1)?,
        None => out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let rope = Rope {
            theta: 10000.0,
            rotary_dim: 8,
            scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
        };
        let plain = inv_freq(&Rope {
            scaling: None,
            ..rope.clone()
        });
        let scaled = inv_freq(&rope);
        // Wavelengths 6.3, 63, 628, 6283 against the band [64/4, 64/1]: short ones are kept,
        // long ones divided by the factor, the one inside the band interpolated.
        assert_eq!(scaled[0], plain[0]);
        assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0);
        assert!((scaled[2] - plain[2] / 8.0).abs() < 1e-15);
        assert!((scaled[3] - plain[3] / 8.0).abs() < 1e-15);
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope {
            theta: 10000.0,
            rotary_dim: 4,
            scaling: None,
        };
        let x = Tensor::randn(0f32, 1., (1, 3, 2, 6), &dev)?;
        let pos = Tensor::new(&[[0u32, 1, 2]], &dev)?;
        let (cos, sin) = tables(&rope, &pos, &dev)?;
        let y = apply(&x, &cos, &sin)?;
        let n = |t: &Tensor| t.sqr().unwrap().sum_keepdim(3).unwrap();
        let diff = (n(&x) - n(&y))?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "norm changed by {diff}");
        let d0 = (x.narrow(1, 0, 1)? - y.narrow(1, 0, 1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d0 < 1e-7);
        // Pass-through dims (partial rotary) are unchanged at every position.
        let dp = (x.narrow(3, 4, 2)? - y.narrow(3, 4, 2)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(dp, 0.0);
        Ok(())
    }
}
