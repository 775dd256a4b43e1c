//! Dataset means for mean ablation: streamed batches equal one brute-force pass.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, max_diff};
use patchclamp_core::{load, HookPoint, Hooks, Input, Intervention, Op, Selection};
use patchclamp_lab::causal::means::{mean_activations, values_of};

#[test]
fn streamed_means_equal_a_brute_force_recount_and_drive_mean_ablation() {
    let dev = Device::Cpu;
    let m = load(&fixture("llama"), &dev).unwrap();
    let prompts: Vec<Vec<u32>> = vec![
        vec![0, 5, 9],
        vec![0, 7, 8, 9, 11],
        vec![3],
        vec![0, 1, 2, 4],
    ];
    let points = [
        HookPoint::ResidPost(0),
        HookPoint::Z(1),
        HookPoint::MlpPost(1),
    ];
    let means = mean_activations(&m.model, &prompts, &points, 3).unwrap();
    // Brute force: every prompt alone, every token summed.
    for (p, mean) in &means {
        let mut sum: Option<Tensor> = None;
        let mut n = 0;
        for ids in &prompts {
            let mut h = Hooks::none().capture(*p);
            m.model
                .forward(&Input::single(ids, &dev).unwrap(), &mut h)
                .unwrap();
            let x = h
                .cache()
                .get(*p)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .sum(0)
                .unwrap();
            n += ids.len();
            sum = Some(match sum {
                Some(s) => (s + x).unwrap(),
                None => x,
            });
        }
        let want = (sum.unwrap() / n as f64).unwrap();
        let d = max_diff(mean, &want);
        assert!(d < 1e-5, "{p}: streamed mean differs by {d:e}");
    }
    // Mean-ablating a point sets every selected element to its dataset mean.
    let (p, mean) = &means[2];
    let iv = Intervention {
        at: *p,
        select: Selection::default(),
        op: Op::Mean {
            mean: values_of(mean).unwrap(),
        },
        when: Default::default(),
        decode: None,
    };
    let mut h = Hooks::none().intervene(iv).capture(*p);
    m.model
        .forward(&Input::single(&[0, 5, 6], &dev).unwrap(), &mut h)
        .unwrap();
    let got = h.cache().get(*p).unwrap();
    let d: f32 = got
        .broadcast_sub(mean)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(d < 1e-6);
    let e = mean_activations(&m.model, &prompts, &[HookPoint::Pattern(0)], 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("undefined"), "{e}");
}
