use candle_core::{Device, Tensor};
use std::time::Instant;
fn t<F: FnMut() -> candle_core::Result<Tensor>>(name: &str, mut f: F) {
    f().unwrap();
    let n = 10;
    let s = Instant::now();
    for _ in 0..n {
        let _ = f().unwrap();
    }
    println!(
        "{name:40} {:8.2} ms",
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}
fn main() -> candle_core::Result<()> {
    patchclamp_core::sys::tune_allocator();
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (1024, 768), &dev)?;
    let w1 = Tensor::randn(0f32, 1., (768, 768), &dev)?;
    let w3 = Tensor::randn(0f32, 1., (768, 2304), &dev)?;
    let w4 = Tensor::randn(0f32, 1., (768, 3072), &dev)?;
    let w4t = Tensor::randn(0f32, 1., (3072, 768), &dev)?;
    let h = Tensor::randn(0f32, 1., (1024, 3072), &dev)?;
    t("3 x (768x768)", || {
        x.matmul(&w1)?;
        x.matmul(&w1)?;
        x.matmul(&w1)
    });
    t("1 x (768x2304)", || x.matmul(&w3));
    t("768x3072", || x.matmul(&w4));
    t("3072x768", || h.matmul(&w4t));
    t("768x3072 via t()", || x.matmul(&w4t.t()?));
    let b4 = Tensor::randn(0f32, 1., 3072, &dev)?;
    t("linear_bias kernel 768x3072", || {
        patchclamp_core::model::kernels::linear_bias_inference(&x, &w4, &b4)
    });
    t("gelu kernel 1024x3072", || {
        patchclamp_core::model::kernels::gelu_tanh(&h)
    });
    let s = Tensor::randn(0f32, 1., (8, 12, 128, 128), &dev)?;
    t("softmax kernel", || {
        patchclamp_core::model::kernels::softmax_last_dim_inference(&s)
    });
    t("softmax candle", || candle_nn::ops::softmax_last_dim(&s));
    let q4 = Tensor::randn(0f32, 1., (8, 128, 12, 64), &dev)?;
    t("q transpose * scale", || q4.transpose(1, 2)? * 0.125);
    let q = Tensor::randn(0f32, 1., (8, 12, 128, 64), &dev)?;
    t("q @ k.t()", || q.matmul(&q.t()?));
    t("p @ v", || s.matmul(&q));
    Ok(())
}
#[allow(dead_code)]
fn unused() {}
