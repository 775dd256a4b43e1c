//! Ragged batches: each prompt of a padded batch gives the same logits and activations as
//! running it alone (tolerance 1e-4 absolute, f32), for left and right padding, every family.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, max_diff};
use patchclamp_core::{load, HookPoint, Hooks, Input, Padding, Selector};

const TOL: f32 = 1e-4;

/// Rows of `x` `[B, S, ...]` (positions on dim 1) for row `row`'s real tokens.
fn real_rows(x: &Tensor, input: &Input, row: usize, pos_dim: usize) -> Tensor {
    let start = input.index_of(row, 0);
    x.narrow(0, row, 1)
        .unwrap()
        .narrow(pos_dim, start, input.lengths[row])
        .unwrap()
}

#[test]
fn padded_batch_equals_each_prompt_alone() {
    let dev = Device::Cpu;
    let prompts = [
        "The cat sat on the mat, and the cat sat again.",
        "hello world",
        "John gave a drink to Mary",
    ];
    let points = [
        "blocks.1.hook_resid_post",
        "blocks.0.attn.hook_z",
        "blocks.1.attn.hook_pattern",
    ];
    for name in ["gpt2", "llama", "mistral", "qwen2", "mixtral", "olmoe"] {
        let m = load(&fixture(name), &dev).unwrap();
        let tok = m.tokenizer().unwrap();
        let seqs: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| tok.prompt(&m.model.cfg, p, None).unwrap())
            .collect();
        for padding in [Padding::Left, Padding::Right] {
            let input = Input::batch(&seqs, padding, 0, &dev).unwrap();
            let mut hooks = Hooks::none();
            for p in points {
                hooks = hooks.capture(Selector::parse(p).unwrap());
            }
            let logits = m.model.forward(&input, &mut hooks).unwrap();
            for (row, seq) in seqs.iter().enumerate() {
                let mut alone_hooks = Hooks::none();
                for p in points {
                    alone_hooks = alone_hooks.capture(Selector::parse(p).unwrap());
                }
                let alone = m
                    .model
                    .forward(&Input::single(seq, &dev).unwrap(), &mut alone_hooks)
                    .unwrap();
                let d = max_diff(&real_rows(&logits, &input, row, 1), &alone);
                assert!(
                    d <= TOL,
                    "{name} {padding:?} row {row}: logits differ by {d:e}"
                );
                for p in points {
                    let point: HookPoint = p.parse().unwrap();
                    let batched = hooks.cache().get(point).unwrap();
                    let single = alone_hooks.cache().get(point).unwrap();
                    let got = if matches!(point, HookPoint::Pattern(_)) {
                        // [B, H, Sq, Sk]: real queries, and real keys only.
                        let start = input.index_of(row, 0);
                        let n = input.lengths[row];
                        batched
                            .narrow(0, row, 1)
                            .unwrap()
                            .narrow(2, start, n)
                            .unwrap()
                            .narrow(3, start, n)
                            .unwrap()
                    } else {
                        real_rows(batched, &input, row, 1)
                    };
                    let d = max_diff(&got, single);
                    assert!(
                        d <= TOL,
                        "{name} {padding:?} row {row}: {p} differs by {d:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn capture_stores_only_what_was_asked_and_slices_positions() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let ids = vec![0u32, 5, 9, 17, 3];
    let input = Input::single(&ids, &dev).unwrap();

    let mut nothing = Hooks::none();
    m.model.forward(&input, &mut nothing).unwrap();
    assert!(
        nothing.cache().is_empty(),
        "no capture requested, nothing stored"
    );

    let mut hooks = Hooks::none()
        .capture(Selector::parse("blocks.*.hook_resid_pre").unwrap())
        .at_positions(vec![0, -1]);
    m.model.forward(&input, &mut hooks).unwrap();
    let mut full = Hooks::none().capture(Selector::Layer(1));
    m.model.forward(&input, &mut full).unwrap();
    assert_eq!(hooks.cache().len(), 2);
    // A transposed view (hook_z) slices too.
    let mut z = Hooks::none()
        .capture(HookPoint::Z(0))
        .at_positions(vec![-1]);
    m.model.forward(&input, &mut z).unwrap();
    assert_eq!(
        z.cache().get(HookPoint::Z(0)).unwrap().dims(),
        &[1, 1, 4, 8]
    );
    let sliced = hooks.cache().by_name("blocks.1.hook_resid_pre").unwrap();
    assert_eq!(sliced.dims(), &[1, 2, 32]);
    let whole = full.cache().by_name("blocks.1.hook_resid_pre").unwrap();
    assert_eq!(
        max_diff(
            &sliced.narrow(1, 1, 1).unwrap(),
            &whole.narrow(1, 4, 1).unwrap()
        ),
        0.0
    );
    // A predicate, like TransformerLens's names_filter.
    let mut heads =
        Hooks::none().capture(Selector::filter(|p| p.has_heads() && p.layer() == Some(0)));
    m.model.forward(&input, &mut heads).unwrap();
    assert_eq!(
        heads.cache().len(),
        7,
        "q, k, v, scores, pattern, z, result of block 0"
    );
    // Layer selection records exactly that block's points.
    assert!(full.cache().iter().all(|(p, _)| p.layer() == Some(1)));
    assert!(
        full.cache().get(HookPoint::Result(1)).is_some(),
        "hook_result is computed when asked"
    );
}

#[test]
fn capturing_does_not_change_logits() {
    let dev = Device::Cpu;
    for name in ["gpt2", "llama"] {
        let m = load(&fixture(name), &dev).unwrap();
        let input = Input::single(&[0, 7, 8, 9, 10, 11], &dev).unwrap();
        let plain = m.model.forward(&input, &mut Hooks::none()).unwrap();
        let mut all = Hooks::none().capture_all();
        let hooked = m.model.forward(&input, &mut all).unwrap();
        assert_eq!(
            max_diff(&plain, &hooked),
            0.0,
            "{name}: recording every point, hook_result included"
        );
        let mut most = Hooks::none().capture(Selector::parse("blocks.*.hook_resid_post").unwrap());
        let same = m.model.forward(&input, &mut most).unwrap();
        assert_eq!(
            max_diff(&plain, &same),
            0.0,
            "{name}: capturing must not change the numbers"
        );
    }
}

#[test]
fn an_edit_changes_downstream_activations() {
    let dev = Device::Cpu;
    let m = load(&fixture("gpt2"), &dev).unwrap();
    let input = Input::single(&[0, 7, 8, 9], &dev).unwrap();
    let plain = m.model.forward(&input, &mut Hooks::none()).unwrap();
    // Zero-ablating every layer's MLP output plus attention output leaves only the embeddings.
    let mut hooks = Hooks::none();
    for l in 0..2 {
        hooks = hooks
            .edit(HookPoint::MlpOut(l), |_, x| Ok(x.zeros_like()?))
            .edit(HookPoint::AttnOut(l), |_, x| Ok(x.zeros_like()?));
    }
    let hooks = &mut hooks.capture(HookPoint::ResidPost(1));
    let ablated = m.model.forward(&input, hooks).unwrap();
    assert!(max_diff(&plain, &ablated) > 1e-2);
    let mut emb = Hooks::none()
        .capture(HookPoint::Embed)
        .capture(HookPoint::PosEmbed);
    m.model.forward(&input, &mut emb).unwrap();
    let want = (emb.cache().get(HookPoint::Embed).unwrap()
        + emb.cache().get(HookPoint::PosEmbed).unwrap())
    .unwrap();
    assert!(max_diff(hooks.cache().get(HookPoint::ResidPost(1)).unwrap(), &want) < 1e-6);
}

#[test]
fn editing_hook_result_removes_exactly_that_heads_contribution() {
    let dev = Device::Cpu;
    let m = load(&fixture("llama"), &dev).unwrap();
    let input = Input::single(&[0, 7, 8, 9, 10], &dev).unwrap();
    let mut rec = Hooks::none()
        .capture(HookPoint::Result(1))
        .capture(HookPoint::AttnOut(1));
    m.model.forward(&input, &mut rec).unwrap();
    let result = rec.cache().get(HookPoint::Result(1)).unwrap().clone();
    let head2 = result.narrow(2, 2, 1).unwrap().squeeze(2).unwrap();
    let want = (rec.cache().get(HookPoint::AttnOut(1)).unwrap() - head2).unwrap();

    let mut edit = Hooks::none()
        .edit(HookPoint::Result(1), |_, x| {
            let keep = Tensor::new(&[1f32, 1., 0., 1.], x.device())?.reshape((1, 1, 4, 1))?;
            Ok(x.broadcast_mul(&keep)?)
        })
        .capture(HookPoint::AttnOut(1));
    m.model.forward(&input, &mut edit).unwrap();
    let d = max_diff(edit.cache().get(HookPoint::AttnOut(1)).unwrap(), &want);
    assert!(d < 1e-5, "attn_out after ablating head 2 differs by {d:e}");
}

#[test]
fn forward_spans_start_and_stop_at_layers() {
    use patchclamp_core::model::Span;
    let dev = Device::Cpu;
    for name in ["gpt2", "qwen2"] {
        let m = load(&fixture(name), &dev).unwrap();
        let input = Input::single(&[3, 7, 8, 9, 10], &dev).unwrap();
        let mut rec = Hooks::none().capture(Selector::parse("blocks.*.hook_resid_pre").unwrap());
        let full = m.model.forward(&input, &mut rec).unwrap();
        let r1 = rec.cache().get(HookPoint::ResidPre(1)).unwrap().clone();
        let stopped = m
            .model
            .forward_span(
                &input,
                &mut Hooks::none(),
                Span {
                    stop_at_layer: Some(1),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            max_diff(&stopped, &r1),
            0.0,
            "{name}: stop_at_layer(1) is resid_pre(1)"
        );
        let resumed = m
            .model
            .forward_span(
                &input,
                &mut Hooks::none(),
                Span {
                    start: Some((1, r1)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            max_diff(&resumed, &full),
            0.0,
            "{name}: starting at layer 1 from its cached input"
        );
        let last = m
            .model
            .forward_span(
                &input,
                &mut Hooks::none(),
                Span {
                    last_position_only: true,
                    ..Default::default()
                },
            )
            .unwrap();
        // A one-row product blocks differently from a five-row one: equal up to rounding.
        assert!(
            max_diff(&last, &full.narrow(1, 4, 1).unwrap()) < 1e-4,
            "{name}: last position only"
        );
        let e = m
            .model
            .forward_span(
                &input,
                &mut Hooks::none(),
                Span {
                    stop_at_layer: Some(3),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("layer 3 is out of range"), "{e}");
    }
}
