//! Dataset means of activations, for mean ablation (`Op::Mean`): streamed over batches, so
//! memory does not grow with the number of prompts.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use patchclamp_core::hooks::Values;
use patchclamp_core::{HookPoint, Hooks, Input, Model, Padding};

/// The mean of each point's activation over every real token of `prompts`, with batch and
/// position averaged out (`[d_model]`, `[n_heads, d_head]`, …). Attention maps are refused:
/// their key dimension depends on the prompt length.
pub fn mean_activations(
    model: &Model,
    prompts: &[Vec<u32>],
    points: &[HookPoint],
    batch: usize,
) -> Result<Vec<(HookPoint, Tensor)>> {
    if prompts.is_empty() || batch == 0 {
        return Err(Error::Input(
            "mean_activations needs at least one prompt and a positive batch".into(),
        ));
    }
    if let Some(p) = points
        .iter()
        .find(|p| matches!(p, HookPoint::AttnScores(_) | HookPoint::Pattern(_)))
    {
        return Err(Error::Input(format!(
            "{p}: the mean of an attention map over prompts of different lengths is undefined"
        )));
    }
    let dev = model.device();
    let mut sums: Vec<Option<Tensor>> = vec![None; points.len()];
    let mut count = 0f64;
    for chunk in prompts.chunks(batch) {
        let input = Input::batch(chunk, Padding::Right, 0, dev)?;
        let mut hooks = Hooks::none();
        for &p in points {
            hooks = hooks.capture(p);
        }
        model.forward(&input, &mut hooks)?;
        // Real-token mask [B, S], broadcast over the trailing dims of each activation.
        let (b, s) = input.dims()?;
        let mask = match &input.mask {
            Some(m) => m.to_dtype(DType::F32)?,
            None => Tensor::ones((b, s), DType::F32, dev)?,
        };
        count += input.lengths.iter().sum::<usize>() as f64;
        for (i, &p) in points.iter().enumerate() {
            let x = hooks
                .cache()
                .get(p)
                .ok_or_else(|| Error::Input(format!("{p} not recorded")))?;
            let mut m = mask.clone();
            for _ in 2..x.rank() {
                m = m.unsqueeze(m.rank())?;
            }
            let s = x.broadcast_mul(&m)?.sum(0)?.sum(0)?;
            sums[i] = Some(match sums[i].take() {
                Some(acc) => (acc + s)?,
                None => s,
            });
        }
    }
    points
        .iter()
        .zip(sums)
        .map(|(&p, s)| Ok((p, (s.expect("one batch at least") / count)?)))
        .collect()
}

/// A tensor as spec values (for `Op::Mean { mean }` and `Op::Set { value }`).
pub fn values_of(t: &Tensor) -> Result<Values> {
    let data: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    Ok(Values::Tensor {
        shape: t.dims().to_vec(),
        data: data.into_iter().map(f64::from).collect(),
    })
}
