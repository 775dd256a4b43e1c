//! Head detectors on the training lab's own induction model: trained from the flagship's
//! baseline experiment past its phase change, the detectors must name a previous-token head in
//! layer 0 and an induction head in layer 1 that reads it (K-composition) and copies.

use patchclamp_lab::analysis::heads::{best_head, head_report, HeadProbe};
use patchclamp_lab::analysis::probes::Composition;
use patchclamp_lab::experiment::presets;

#[test]
fn detectors_find_the_induction_circuit_of_a_trained_model() {
    // As `patchclamp train` does: a small model's element-wise ops run faster on the calling
    // thread than on candle's pool (the only test of this binary, set before any op).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // The flagship baseline's phase change is at step ~800 (seed 0).
    let steps = 1000;
    let (_, exp) = presets::induction(0, steps).remove(0);
    let task = exp.task.clone();
    let mut tr = exp.trainer().unwrap();
    for _ in 0..steps {
        tr.train_step(task.task()).unwrap();
    }
    let model = tr.snapshot().unwrap();
    let probe = HeadProbe {
        n: 32,
        block: 24,
        repeats: 2,
        seed: 3,
        prefix: None,
        chunk: 16,
    };
    let rep = head_report(&model, &probe).unwrap();
    let s = &rep.scores;
    eprintln!(
        "PT {:?}\nIND {:?}\nPM {:?}\ncopy {:?}",
        s.prev_token, s.induction, s.prefix_matching, rep.copying
    );
    let (li, hi, ind) = best_head(&s.induction);
    let (lp, hp, pt) = best_head(&s.prev_token);
    assert_eq!(li, 1, "the induction head is in layer 1");
    assert_eq!(lp, 0, "the previous-token head is in layer 0");
    assert!(ind > 0.4, "induction score {ind}");
    assert!(pt > 0.3, "previous-token score {pt}");
    // Prefix matching agrees with the induction score's choice.
    assert_eq!(best_head(&s.prefix_matching).0, 1);
    assert!(
        rep.copying[li][hi] > 0.0,
        "the induction head copies: {}",
        rep.copying[li][hi]
    );
    let k = rep
        .composition
        .iter()
        .find(|c| c.kind == Composition::K && c.l1 == 0 && c.l2 == 1)
        .unwrap();
    let kc = k.scores[hp][hi] as f64;
    eprintln!(
        "K-comp PT {hp} -> IND {hi}: {kc:.3} (random {:.3})",
        k.baseline
    );
    assert!(kc > k.baseline, "K-composition above random");
}
