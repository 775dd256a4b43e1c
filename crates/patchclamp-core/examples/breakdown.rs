use candle_core::{Device, Tensor};
use patchclamp_core::model::Weights;
use patchclamp_core::{Config, HookPoint, Hooks, Input, Model};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
fn main() -> patchclamp_core::Result<()> {
    patchclamp_core::sys::tune_allocator();
    let dev = Device::Cpu;
    let cfg = Config::gpt2_small();
    let model = Model::new(cfg.clone(), Weights::random(&cfg, 0, &dev)?)?;
    let ids: Vec<u32> = (0..8 * 128).map(|i| (i * 7919 % 50257) as u32).collect();
    let input = Input::single(&ids[..128], &dev)?;
    let input = Input {
        tokens: Tensor::from_vec(ids, (8, 128), &dev)?,
        positions: input.positions.repeat((8, 1))?,
        mask: None,
        lengths: vec![128; 8],
        padding: Default::default(),
    };
    let acc: Arc<Mutex<BTreeMap<String, f64>>> = Default::default();
    for it in 0..3 {
        let last = Arc::new(Mutex::new(Instant::now()));
        let mut hooks = Hooks::none();
        for p in HookPoint::all(&cfg) {
            if p == HookPoint::Result(0) || matches!(p, HookPoint::Result(_)) {
                continue;
            }
            let (last, acc) = (last.clone(), acc.clone());
            hooks = hooks.edit(p, move |p, x| {
                let now = Instant::now();
                let dt = now.duration_since(*last.lock().unwrap()).as_secs_f64();
                *last.lock().unwrap() = now;
                let key = p.kind_name().to_string();
                if it > 0 {
                    *acc.lock().unwrap().entry(key).or_default() += dt;
                }
                Ok(x.clone())
            });
        }
        let t = Instant::now();
        model.forward(&input, &mut hooks)?;
        println!("forward {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    let mut v: Vec<(String, f64)> = acc.lock().unwrap().clone().into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (k, t) in v {
        println!("{k:28} {:8.1} ms (time from previous hook)", t * 1e3 / 2.0);
    }
    Ok(())
}
