//! Next-token cross-entropy `−log softmax(logits)[target]` per row, one fused op each way.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::f32_slice;

/// `−log softmax(logits)[target]` per row of `[n, C]` logits, with its backward
/// `(softmax − onehot) · grad`.
struct CrossEntropy {
    targets: Vec<u32>,
}

/// Row `(max, log Σ exp(x − max))`.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    (max, sum.ln())
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "patchclamp-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = f32_slice(storage, layout, "cross entropy")?;
        let c = layout.shape().dims()[1];
        let out = data
            .chunks(c)
            .zip(&self.targets)
            .map(|(row, &t)| {
                let (max, lse) = log_sum_exp(row);
                max + lse - row[t as usize]
            })
            .collect::<Vec<f32>>();
        Ok((CpuStorage::F32(out), Shape::from(self.targets.len())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (n, c) = x.dims2()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let g = grad.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * c];
        for (i, (row, o)) in xs.chunks(c).zip(out.chunks_mut(c)).enumerate() {
            let (max, lse) = log_sum_exp(row);
            for (oj, &xj) in o.iter_mut().zip(row) {
                *oj = (xj - max - lse).exp() * g[i];
            }
            o[self.targets[i] as usize] -= g[i];
        }
        Ok(Some(Tensor::from_vec(out, (n, c), x.device())?))
    }
}

/// `−log softmax(logits)[targets[i]]` of each row of `[n, C]` `logits` (CPU), differentiable.
pub fn cross_entropy(logits: &Tensor, targets: Vec<u32>) -> candle_core::Result<Tensor> {
    let op = CrossEntropy { targets };
    let logits = logits.contiguous()?;
    if logits.track_op() {
        logits.apply_op1(op)
    } else {
        logits.apply_op1_no_bwd(&op)
    }
}
