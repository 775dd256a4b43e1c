//! Linear probes on recorded activations (logistic regression with held-out accuracy), concept
//! activation vectors and TCAV with its random-concept significance test (METHODS.md §7.9).

use candle_core::{Tensor, Var};
use patchclamp_core::rng::Rng;
use patchclamp_core::{HookPoint, Hooks, Input, Model, Padding};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::stats::welch_test;

/// Where in the sequence a feature vector is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The last real token.
    #[default]
    Last,
    /// The mean over real tokens.
    Mean,
}

/// One feature vector per prompt: the activation at `point` (flattened after the position
/// dimension), pooled over positions.
pub fn features(
    model: &Model,
    prompts: &[Vec<u32>],
    point: HookPoint,
    pooling: Pooling,
) -> Result<Vec<Vec<f64>>> {
    if !point.exists_in(&model.cfg)
        || matches!(point, HookPoint::Pattern(_) | HookPoint::AttnScores(_))
    {
        return Err(Error::Input(format!(
            "cannot probe {point}: pick a point with one vector per position (resid, mlp, z, …)"
        )));
    }
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(32) {
        let input = Input::batch(chunk, Padding::Right, 0, model.device())?;
        let mut hooks = Hooks::none().capture(point);
        model.forward(&input, &mut hooks)?;
        let x = hooks.cache().get(point).expect("captured");
        let (b, s) = (x.dims()[0], x.dims()[1]);
        let x = x.reshape((b, s, ()))?.to_vec3::<f32>()?;
        for (row, xr) in x.iter().enumerate() {
            let n = input.lengths[row];
            let pick: Vec<usize> = match pooling {
                Pooling::Last => vec![input.last_index(row)],
                Pooling::Mean => (0..n).map(|i| input.index_of(row, i)).collect(),
            };
            let mut v = vec![0.0; xr[0].len()];
            for &t in &pick {
                for (o, &a) in v.iter_mut().zip(&xr[t]) {
                    *o += a as f64 / pick.len() as f64;
                }
            }
            out.push(v);
        }
    }
    Ok(out)
}

/// A multinomial logistic regression on standardised features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogReg {
    /// `[class][feature]` weights on standardised features.
    pub w: Vec<Vec<f64>>,
    pub b: Vec<f64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Training settings of [`fit_logistic`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitSpec {
    pub l2: f64,
    pub iters: usize,
    pub lr: f64,
}

impl Default for FitSpec {
    fn default() -> Self {
        FitSpec {
            l2: 1e-2,
            iters: 300,
            lr: 0.1,
        }
    }
}

/// Fits a `classes`-way logistic regression by full-batch Adam on the L2-regularised
/// cross-entropy (deterministic: no sampling).
pub fn fit_logistic(x: &[Vec<f64>], y: &[usize], classes: usize, spec: FitSpec) -> Result<LogReg> {
    let n = x.len();
    if n == 0 || n != y.len() {
        return Err(Error::Input(format!(
            "a probe needs one label per example (got {n} examples, {} labels)",
            y.len()
        )));
    }
    if let Some(&c) = y.iter().find(|&&c| c >= classes) {
        return Err(Error::Input(format!(
            "label {c} is not below {classes} classes"
        )));
    }
    let d = x[0].len();
    let mean: Vec<f64> = (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let std: Vec<f64> = (0..d)
        .map(|j| {
            let v = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n as f64;
            v.sqrt().max(1e-8)
        })
        .collect();
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|r| (0..d).map(|j| (r[j] - mean[j]) / std[j]).collect())
        .collect();
    let mut w = vec![vec![0.0; d]; classes];
    let mut b = vec![0.0; classes];
    let np = classes * (d + 1);
    let (mut m1, mut m2) = (vec![0.0; np], vec![0.0; np]);
    for it in 1..=spec.iters {
        let mut g = vec![0.0; np];
        for (zi, &yi) in z.iter().zip(y) {
            let logits: Vec<f64> = (0..classes)
                .map(|c| b[c] + w[c].iter().zip(zi).map(|(a, x)| a * x).sum::<f64>())
                .collect();
            let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
            let s: f64 = e.iter().sum();
            for (c, ec) in e.iter().enumerate() {
                let r = ec / s - (c == yi) as u8 as f64;
                let base = c * (d + 1);
                for j in 0..d {
                    g[base + j] += r * zi[j] / n as f64;
                }
                g[base + d] += r / n as f64;
            }
        }
        for c in 0..classes {
            for j in 0..d {
                g[c * (d + 1) + j] += spec.l2 * w[c][j];
            }
        }
        let (b1, b2) = (0.9f64, 0.999f64);
        for k in 0..np {
            m1[k] = b1 * m1[k] + (1.0 - b1) * g[k];
            m2[k] = b2 * m2[k] + (1.0 - b2) * g[k] * g[k];
            let step = spec.lr * (m1[k] / (1.0 - b1.powi(it as i32)))
                / ((m2[k] / (1.0 - b2.powi(it as i32))).sqrt() + 1e-8);
            let (c, j) = (k / (d + 1), k % (d + 1));
            if j == d {
                b[c] -= step;
            } else {
                w[c][j] -= step;
            }
        }
    }
    Ok(LogReg { w, b, mean, std })
}

impl LogReg {
    /// The most likely class of `x`.
    pub fn predict(&self, x: &[f64]) -> usize {
        let score = |c: usize| {
            self.b[c]
                + (0..x.len())
                    .map(|j| self.w[c][j] * (x[j] - self.mean[j]) / self.std[j])
                    .sum::<f64>()
        };
        (0..self.w.len())
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap_or(0)
    }

    /// Fraction of `x` classified as `y`.
    pub fn accuracy(&self, x: &[Vec<f64>], y: &[usize]) -> f64 {
        let hits = x
            .iter()
            .zip(y)
            .filter(|(xi, &yi)| self.predict(xi) == yi)
            .count();
        hits as f64 / x.len().max(1) as f64
    }

    /// The unit vector in activation space along which class 1 beats class 0 (binary probes):
    /// the normal of the decision boundary, pointing to class 1.
    pub fn direction(&self) -> Vec<f64> {
        let d = self.mean.len();
        let v: Vec<f64> = (0..d)
            .map(|j| (self.w[1][j] - self.w[0][j]) / self.std[j])
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        v.into_iter().map(|x| x / n).collect()
    }
}

/// A probe's accuracy on its training split and on held-out examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub n_train: usize,
    pub n_test: usize,
    /// Accuracy of always guessing the most frequent training class.
    pub majority_baseline: f64,
    pub model: LogReg,
}

/// Fits a probe on a seeded random `1 − test_fraction` of the examples and scores the rest.
pub fn train_probe(
    x: &[Vec<f64>],
    y: &[usize],
    classes: usize,
    test_fraction: f64,
    seed: u64,
    spec: FitSpec,
) -> Result<ProbeResult> {
    let n = x.len();
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        idx.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let n_test = ((n as f64) * test_fraction).round() as usize;
    if n_test == 0 || n_test >= n {
        return Err(Error::Input(format!(
            "a held-out split of {test_fraction} leaves no training or no test examples out of {n}"
        )));
    }
    let (test, train) = idx.split_at(n_test);
    let pick = |ids: &[usize]| -> (Vec<Vec<f64>>, Vec<usize>) {
        (
            ids.iter().map(|&i| x[i].clone()).collect(),
            ids.iter().map(|&i| y[i]).collect(),
        )
    };
    let ((xtr, ytr), (xte, yte)) = (pick(train), pick(test));
    let model = fit_logistic(&xtr, &ytr, classes, spec)?;
    let mut counts = vec![0usize; classes];
    ytr.iter().for_each(|&c| counts[c] += 1);
    let major = (0..classes).max_by_key(|&c| counts[c]).unwrap_or(0);
    Ok(ProbeResult {
        train_accuracy: model.accuracy(&xtr, &ytr),
        test_accuracy: model.accuracy(&xte, &yte),
        n_train: xtr.len(),
        n_test: xte.len(),
        majority_baseline: yte.iter().filter(|&&c| c == major).count() as f64 / yte.len() as f64,
        model,
    })
}

/// A concept activation vector: the unit normal separating `concept` from `random` features.
pub fn cav(concept: &[Vec<f64>], random: &[Vec<f64>]) -> Result<Vec<f64>> {
    let x: Vec<Vec<f64>> = random.iter().chain(concept).cloned().collect();
    let y: Vec<usize> = std::iter::repeat_n(0, random.len())
        .chain(std::iter::repeat_n(1, concept.len()))
        .collect();
    Ok(fit_logistic(&x, &y, 2, FitSpec::default())?.direction())
}

/// Per input, the gradient of the class-`class_token` logit at its last position with respect to
/// the activation at `point` (last position, flattened).
pub fn logit_gradients(
    model: &Model,
    inputs: &[Vec<u32>],
    point: HookPoint,
    class_token: u32,
) -> Result<Vec<Vec<f64>>> {
    if class_token as usize >= model.cfg.d_vocab {
        return Err(Error::OutOfRange {
            what: "class token",
            index: class_token as i64,
            limit: format!("a vocabulary of {} tokens", model.cfg.d_vocab),
        });
    }
    let mut out = vec![];
    for chunk in inputs.chunks(16) {
        let input = Input::batch(chunk, Padding::Right, 0, model.device())?;
        let mut rec = Hooks::none().capture(point);
        model.forward(&input, &mut rec)?;
        let a = Var::from_tensor(rec.cache().get(point).expect("captured"))?;
        let a_t = a.as_tensor().clone();
        let mut hooks = Hooks::none().edit(point, move |_, _| Ok(a_t.clone()));
        let logits = model.forward(&input, &mut hooks)?;
        // Σ over rows of each row's last-position class logit: rows do not interact.
        let mut picks = vec![];
        for row in 0..chunk.len() {
            picks.push(
                logits
                    .get(row)?
                    .get(input.last_index(row))?
                    .get(class_token as usize)?,
            );
        }
        let total = Tensor::stack(&picks, 0)?.sum_all()?;
        let grads = total.backward()?;
        let g = grads
            .get(a.as_tensor())
            .ok_or_else(|| Error::Numeric(format!("no gradient reaches {point}")))?;
        let (b, s) = (g.dims()[0], g.dims()[1]);
        let g = g.reshape((b, s, ()))?.to_vec3::<f32>()?;
        for (row, gr) in g.iter().enumerate() {
            out.push(
                gr[input.last_index(row)]
                    .iter()
                    .map(|&x| x as f64)
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// The TCAV result for one concept, class and layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tcav {
    /// TCAV score of each concept-vs-random CAV.
    pub scores: Vec<f64>,
    /// TCAV score of each random-vs-random CAV.
    pub random_scores: Vec<f64>,
    pub mean: f64,
    pub random_mean: f64,
    /// Two-sided Welch t-test p-value, concept vs random.
    pub p_value: f64,
    /// `p < 0.05 / tests` (Bonferroni).
    pub significant: bool,
}

/// TCAV (Kim et al. 2018): the fraction of inputs (given by their logit `gradients`) whose
/// class logit increases along the concept's CAV, over `runs` random negative sets drawn from
/// `random_pool`, against CAVs between two random sets; significant if the t-test rejects at
/// `0.05 / tests`.
pub fn tcav(
    concept: &[Vec<f64>],
    random_pool: &[Vec<f64>],
    gradients: &[Vec<f64>],
    runs: usize,
    seed: u64,
    tests: usize,
) -> Result<Tcav> {
    // Random sets as large as the concept set, or half the pool (two disjoint sets per
    // random-vs-random CAV).
    let k = concept.len().min(random_pool.len() / 2);
    if k < 2 || runs < 2 {
        return Err(Error::Input(format!(
            "TCAV needs ≥ 2 runs, ≥ 2 concept examples and ≥ 4 random examples (got {} runs, {} and {})",
            runs,
            concept.len(),
            random_pool.len()
        )));
    }
    let mut rng = Rng::new(seed);
    let mut draw = |n: usize| -> Vec<Vec<f64>> {
        let mut idx: Vec<usize> = (0..random_pool.len()).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.below(i as u64 + 1) as usize);
        }
        idx[..n].iter().map(|&i| random_pool[i].clone()).collect()
    };
    let score = |v: &[f64]| {
        let pos = gradients
            .iter()
            .filter(|g| g.iter().zip(v).map(|(a, b)| a * b).sum::<f64>() > 0.0)
            .count();
        pos as f64 / gradients.len().max(1) as f64
    };
    let (mut scores, mut random_scores) = (vec![], vec![]);
    for _ in 0..runs {
        let neg = draw(k);
        scores.push(score(&cav(concept, &neg)?));
        let both = draw(2 * k);
        random_scores.push(score(&cav(&both[..k], &both[k..])?));
    }
    let (_, _, p) = welch_test(&scores, &random_scores);
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    Ok(Tcav {
        mean: mean(&scores),
        random_mean: mean(&random_scores),
        significant: p < 0.05 / tests.max(1) as f64,
        p_value: p,
        scores,
        random_scores,
    })
}

/// One probed hook point's accuracies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointProbe {
    pub point: String,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub majority_baseline: f64,
    pub n_train: usize,
    pub n_test: usize,
}

/// Probes at several hook points for the labels of the prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointProbes {
    /// The labels, sorted; a prompt's class is its label's index here.
    pub classes: Vec<String>,
    pub probes: Vec<PointProbe>,
    /// The fitted weights, when a single point was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_weights: Option<LogReg>,
}

/// Fits a held-out-scored logistic probe at each of `points` for the prompts' labels (every
/// prompt needs one; at least two distinct); `on_point` is told when each point is done.
#[allow(clippy::too_many_arguments)]
pub fn probe_points(
    model: &Model,
    prompts: &[Vec<u32>],
    labels: &[Option<String>],
    points: &[HookPoint],
    pooling: Pooling,
    (test_fraction, seed): (f64, u64),
    spec: FitSpec,
    mut on_point: impl FnMut(),
) -> Result<PointProbes> {
    let labelled: Vec<&str> = labels.iter().filter_map(|l| l.as_deref()).collect();
    let mut classes: Vec<&str> = labelled.clone();
    classes.sort();
    classes.dedup();
    if labelled.len() != prompts.len() || classes.len() < 2 {
        return Err(Error::Input(format!(
            "probing needs a \"label\" on every prompt and at least two labels (got {} labelled of {}, labels {classes:?})",
            labelled.len(),
            prompts.len()
        )));
    }
    let y: Vec<usize> = labelled
        .iter()
        .map(|l| classes.iter().position(|c| c == l).unwrap_or(0))
        .collect();
    let mut out = PointProbes {
        classes: classes.iter().map(|c| c.to_string()).collect(),
        probes: vec![],
        probe_weights: None,
    };
    for &p in points {
        let x = features(model, prompts, p, pooling)?;
        let r = train_probe(&x, &y, classes.len(), test_fraction, seed, spec)?;
        out.probes.push(PointProbe {
            point: p.to_string(),
            train_accuracy: r.train_accuracy,
            test_accuracy: r.test_accuracy,
            majority_baseline: r.majority_baseline,
            n_train: r.n_train,
            n_test: r.n_test,
        });
        if points.len() == 1 {
            out.probe_weights = Some(r.model);
        }
        on_point();
    }
    Ok(out)
}

/// Which labelled prompts play which part in a TCAV test.
pub struct TcavSets<'a> {
    /// The concept's examples.
    pub concept: &'a str,
    /// The random examples.
    pub random: &'a str,
    /// The inputs scored (`None`: every prompt labelled neither).
    pub inputs: Option<&'a str>,
}

/// TCAV at `point` for the logit of `class`, with examples chosen from the prompts' labels.
pub fn tcav_of_labels(
    model: &Model,
    prompts: &[(Vec<u32>, Option<String>)],
    sets: &TcavSets,
    point: HookPoint,
    class: u32,
    (runs, seed): (usize, u64),
) -> Result<Tcav> {
    let pick = |want: &dyn Fn(Option<&str>) -> bool| -> Vec<Vec<u32>> {
        prompts
            .iter()
            .filter(|p| want(p.1.as_deref()))
            .map(|p| p.0.clone())
            .collect()
    };
    if sets.concept == sets.random
        || sets
            .inputs
            .is_some_and(|i| i == sets.concept || i == sets.random)
    {
        return Err(Error::Input(format!(
            "TCAV needs three different labels: concept {:?}, random {:?}{}",
            sets.concept,
            sets.random,
            sets.inputs
                .map_or(String::new(), |i| format!(", inputs {i:?}"))
        )));
    }
    let cx = pick(&|l| l == Some(sets.concept));
    let rx = pick(&|l| l == Some(sets.random));
    if rx.is_empty() {
        return Err(Error::Input(format!(
            "TCAV: no prompts labelled {:?} (the random set)",
            sets.random
        )));
    }
    let ix = match sets.inputs {
        Some(lab) => pick(&|l| l == Some(lab)),
        None => pick(&|l| l != Some(sets.concept) && l != Some(sets.random)),
    };
    if cx.is_empty() || ix.is_empty() {
        return Err(Error::Input(format!(
            "TCAV: no prompts labelled {:?} or no inputs to score",
            sets.concept
        )));
    }
    let fc = features(model, &cx, point, Pooling::Last)?;
    let fr = features(model, &rx, point, Pooling::Last)?;
    let grads = logit_gradients(model, &ix, point, class)?;
    tcav(&fc, &fr, &grads, runs, seed, 1)
}
