//! SAEs into run folders: what every face does for `sae train` and `sae eval` (the CLI's
//! `patchclamp sae …`, Python's `patchclamp.sae.train` / `evaluate`): read the corpus, check
//! everything before touching a file, harvest and train (or evaluate), write the SAELens folder,
//! the log, the checkpoint and the report, finish the manifest.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use patchclamp_core::{HookPoint, Sae};
use patchclamp_lab::sae::harvest::{Documents, Harvest, Packer};
use patchclamp_lab::sae::run::{self, SaeEvent, SaeRunOptions};
use patchclamp_lab::sae::train::{StepStats, TrainSpec};

use crate::error::{Error, Result};
use crate::input::Subject;
use crate::output::Outcome;
use crate::plot::{LinePlot, Series};
use crate::run_dir::{self, RunDir, MANIFEST};

/// The SAELens folder inside a training run's folder.
pub const SAE_DIR: &str = "sae";
/// The training log.
pub const LOG: &str = "log.jsonl";
/// The checkpoint.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

impl Subject {
    /// The documents of a corpus file, read and tokenised lazily (no BOS: packing adds it):
    /// a text file holds one document per non-empty line; JSONL one `{"text": …}` or
    /// `{"tokens": […]}` per line.
    pub fn corpus<'a>(&'a self, path: &Path) -> Result<Documents<'a>> {
        if !path.is_file() {
            return Err(Error::Input(format!(
                "corpus {} is not a file",
                path.display()
            )));
        }
        let file = std::fs::File::open(path).map_err(|e| Error::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        let jsonl = path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "json");
        let shown = path.display().to_string();
        let vocab = self.model.cfg.d_vocab;
        let lines = std::io::BufReader::new(file).lines().enumerate();
        let iter = lines.filter_map(move |(i, line)| {
            let at = format!("{shown}:{}", i + 1);
            let lab = |m: String| patchclamp_lab::Error::Input(format!("{at}: {m}"));
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(lab(e.to_string()))),
            };
            if line.trim().is_empty() {
                return None;
            }
            let ids = if jsonl {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Doc {
                    text: Option<String>,
                    tokens: Option<Vec<u32>>,
                }
                match serde_json::from_str::<Doc>(&line) {
                    Ok(Doc {
                        text: Some(t),
                        tokens: None,
                    }) => self.plain_ids(&t),
                    Ok(Doc {
                        text: None,
                        tokens: Some(ids),
                    }) => Ok(ids),
                    Ok(_) => Err(Error::Input(
                        "give exactly one of \"text\" or \"tokens\"".into(),
                    )),
                    Err(e) => Err(Error::Input(e.to_string())),
                }
            } else {
                self.plain_ids(&line)
            };
            Some(match ids {
                Ok(ids) => match ids.iter().find(|&&t| t as usize >= vocab) {
                    Some(t) => Err(lab(format!(
                        "token id {t} is outside the vocabulary of {vocab}"
                    ))),
                    None => Ok(ids),
                },
                Err(e) => Err(lab(e.to_string())),
            })
        });
        Ok(Box::new(iter))
    }

    /// A text's ids without BOS (ids separated by spaces for a model without a tokenizer).
    fn plain_ids(&self, text: &str) -> Result<Vec<u32>> {
        match &self.tok {
            Some(t) => Ok(t.encode(text)?),
            None => text
                .split_whitespace()
                .map(|w| w.parse::<u32>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::Input(
                        "this model has no tokenizer: write the corpus as token ids".into(),
                    )
                }),
        }
    }

    /// The model's special tokens (BOS, EOS, PAD), excluded from SAE activations.
    pub fn special_tokens(&self) -> Vec<u32> {
        let c = &self.model.cfg;
        let mut v: Vec<u32> = [c.bos_token_id, c.eos_token_id, c.pad_token_id]
            .into_iter()
            .flatten()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A packer of `path`'s documents into `size`-token contexts (BOS first, documents
    /// separated by EOS or BOS).
    pub fn packer<'a>(&'a self, path: &Path, size: usize) -> Result<Packer<'a>> {
        if size > self.model.cfg.n_ctx {
            return Err(Error::Input(format!(
                "--context-size {size} exceeds the model's context of {}",
                self.model.cfg.n_ctx
            )));
        }
        let c = &self.model.cfg;
        let sep = c.eos_token_id.or(c.bos_token_id);
        Ok(Packer::new(self.corpus(path)?, size, c.bos_token_id, sep)?)
    }

    /// The first `n` contexts of `path` (all when fewer), and whether there were more.
    pub fn contexts(&self, path: &Path, size: usize, n: usize) -> Result<Vec<Vec<u32>>> {
        let mut p = self.packer(path, size)?;
        let mut out = vec![];
        while out.len() < n {
            match p.next_context()? {
                Some(c) => out.push(c),
                None => break,
            }
        }
        if out.is_empty() {
            return Err(Error::Input(format!(
                "{} is shorter than one context of {size} tokens",
                path.display()
            )));
        }
        Ok(out)
    }
}

/// One SAE training run to write into a folder.
pub struct SaeTrainRequest {
    /// The trainer's settings (`d_in` is the hook's width, `steps` from the token budget).
    pub spec: TrainSpec,
    pub hook: HookPoint,
    /// Text or JSONL documents to harvest from…
    pub corpus: PathBuf,
    /// … or a store `sae harvest` wrote (then `corpus` only names the run).
    pub activations: Option<PathBuf>,
    pub context_size: usize,
    /// Shuffle-buffer rows.
    pub buffer: usize,
    pub contexts_per_forward: usize,
    pub checkpoint_every: u64,
    pub log_every: u64,
    /// Held-out text for the LM-loss metrics (CE-loss score, delta LM loss, KL score), every
    /// `eval_every` steps and at the end, over `eval_contexts` contexts.
    pub eval_corpus: Option<PathBuf>,
    pub eval_every: u64,
    pub eval_contexts: usize,
    pub out: PathBuf,
    pub resume: bool,
    pub force: bool,
    /// The command line (or call) shown in the report.
    pub command: String,
}

/// What a training run reports.
pub enum SaeTrainEvent<'a> {
    /// Counting the corpus before anything starts.
    Counting,
    /// The run starts: its step count (and the step it resumes from).
    Start {
        steps: u64,
        from: u64,
    },
    Step {
        stats: &'a StepStats,
        tokens_per_s: f64,
    },
    Resuming {
        step: u64,
    },
}

/// A finished training folder.
pub struct SaeTrainDone {
    pub dir: PathBuf,
    /// The SAELens folder.
    pub sae: PathBuf,
    pub report: PathBuf,
    pub lines: Vec<String>,
    pub last: StepStats,
    /// Training tokens per second over the run (harvest included when harvesting).
    pub tokens_per_s: f64,
}

/// The training report.
#[derive(Serialize)]
struct SaeTrainOutcome {
    command: String,
    hook: String,
    corpus: String,
    context_size: usize,
    spec: TrainSpec,
    harvested_tokens: u64,
    dead: usize,
    log: Vec<StepStats>,
    /// The LM-loss metrics on held-out text (`--eval-corpus`).
    evals: Vec<EvalRecord>,
}

/// One evaluation of the SAE being trained on held-out text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalRecord {
    pub step: u64,
    pub ce_loss_score: f64,
    pub delta_lm_loss: f64,
    pub kl_div_score: f64,
    pub explained_variance: f64,
    pub l0: f64,
}

/// The trainer's current SAE evaluated on held-out contexts.
fn held_out_eval(
    model: &patchclamp_core::Model,
    tr: &patchclamp_lab::sae::train::Trainer,
    hook: &str,
    contexts: &[Vec<u32>],
    exclude: &[u32],
) -> patchclamp_lab::Result<patchclamp_lab::sae::eval::SaeMetrics> {
    let mut sae = tr.to_sae(hook, Default::default(), model.device())?;
    if hook.ends_with("hook_z") {
        sae.cfg.reshape_hook_z = true;
    }
    patchclamp_lab::sae::eval::evaluate(model, &Arc::new(sae), contexts, 8, exclude, |_, _| {})
}

impl Outcome for SaeTrainOutcome {
    fn title(&self) -> String {
        format!("SAE training at {}", self.hook)
    }

    fn summary_lines(&self, _vocab: &crate::Vocab) -> Vec<String> {
        let mut lines = vec![format!(
            "{:?} SAE, d_in {} → d_sae {}, {} steps × {} tokens from {} (contexts of {})",
            self.spec.arch,
            self.spec.d_in,
            self.spec.d_sae,
            self.spec.steps,
            self.spec.batch,
            self.corpus,
            self.context_size
        )];
        if let Some(s) = self.log.last() {
            lines.push(format!(
                "final step {}: loss {:.5}  MSE {:.5}  L0 {:.2}  explained variance {:.4}  dead {} (window {} steps)",
                s.step, s.loss, s.mse, s.l0, s.explained_variance, self.dead, self.spec.dead_window
            ));
        }
        if let Some(e) = self.evals.last() {
            lines.push(format!(
                "held-out text at step {}: CE-loss score {:.4}  delta LM loss {:.4}  KL score {:.4}  explained variance {:.4}  L0 {:.2}",
                e.step, e.ce_loss_score, e.delta_lm_loss, e.kl_div_score, e.explained_variance, e.l0
            ));
        }
        lines
    }

    fn figures(&self, _vocab: &crate::Vocab, page: &mut crate::Page) -> Result<()> {
        let xs: Vec<f64> = self.log.iter().map(|s| s.step as f64).collect();
        let plot = |title: &str, y: &str, ys: Vec<f64>| LinePlot {
            title: title.into(),
            x_label: "step".into(),
            y_label: y.into(),
            series: vec![Series {
                name: y.into(),
                xs: xs.clone(),
                ys,
                dashed: false,
            }],
            markers: vec![],
            hline: None,
            y_range: None,
        };
        page.line(
            "mse",
            "Reconstruction error on each logged batch",
            plot("MSE", "MSE", self.log.iter().map(|s| s.mse).collect()),
        );
        page.line(
            "l0",
            "Active latents per token",
            plot("L0", "L0", self.log.iter().map(|s| s.l0).collect()),
        );
        page.line(
            "explained_variance",
            "Explained variance of each logged batch",
            plot(
                "explained variance",
                "explained variance",
                self.log.iter().map(|s| s.explained_variance).collect(),
            ),
        );
        page.line(
            "dead",
            "Latents not fired within the dead window",
            plot(
                "dead latents",
                "dead",
                self.log.iter().map(|s| s.dead as f64).collect(),
            ),
        );
        if !self.evals.is_empty() {
            page.line(
                "ce_loss_score",
                "CE-loss score on held-out text: 1 when the SAE's reconstruction loses nothing, 0 when it is as bad as zeros",
                LinePlot {
                    title: "CE-loss score (held-out)".into(),
                    x_label: "step".into(),
                    y_label: "CE-loss score".into(),
                    series: vec![Series {
                        name: "CE-loss score".into(),
                        xs: self.evals.iter().map(|e| e.step as f64).collect(),
                        ys: self.evals.iter().map(|e| e.ce_loss_score).collect(),
                        dashed: false,
                    }],
                    markers: vec![],
                    hline: None,
                    y_range: None,
                },
            );
        }
        Ok(())
    }
}

/// Trains an SAE on `subject`'s activations at the request's hook into `req.out`.
pub fn train(
    subject: &Subject,
    req: SaeTrainRequest,
    mut on_event: impl FnMut(SaeTrainEvent),
) -> Result<SaeTrainDone> {
    let model = &subject.model;
    let hook = HookPoint::parse_for(&req.hook.to_string(), &model.cfg)?;
    req.spec.validate()?;
    run_dir::outside_model(&req.out, &subject.home)?;
    if req.log_every == 0 || req.contexts_per_forward == 0 {
        return Err(Error::Input(
            "--log-every and the contexts per forward must be positive".into(),
        ));
    }
    // Everything checked before the folder is touched: the hook, the source's length.
    let exclude = subject.special_tokens();
    let need = req.spec.steps * req.spec.batch as u64;
    let mut harvest = None;
    let mut store = None;
    let identity = match &req.activations {
        Some(dir) => {
            let r = patchclamp_lab::sae::store::StoreReader::open(dir)?;
            if r.info.d_in != req.spec.d_in {
                return Err(Error::Input(format!(
                    "the store holds rows of width {}, {hook} has width {}",
                    r.info.d_in, req.spec.d_in
                )));
            }
            if !r.info.hook.is_empty() && r.info.hook != hook.to_string() {
                return Err(Error::Input(format!(
                    "the store was harvested at {}, not {hook}",
                    r.info.hook
                )));
            }
            if r.info.rows < need {
                return Err(Error::Input(format!(
                    "the store holds {} rows, fewer than the {need} the run needs ({} steps × batch {})",
                    r.info.rows, req.spec.steps, req.spec.batch
                )));
            }
            let index = std::fs::read(dir.join("store.json")).map_err(|e| Error::Read {
                path: dir.clone(),
                source: e,
            })?;
            let id = format!(
                "model {} | hook {hook} | store {}",
                subject.home.display(),
                crate::content_hash(&index)
            );
            store = Some(r);
            id
        }
        None => {
            let mut h = Harvest::new(
                model,
                hook,
                subject.packer(&req.corpus, req.context_size)?,
                exclude.clone(),
                req.buffer,
                req.spec.seed,
            )?;
            if h.width() != req.spec.d_in {
                return Err(Error::Input(format!(
                    "d_in {} is not {hook}'s width {}",
                    req.spec.d_in,
                    h.width()
                )));
            }
            on_event(SaeTrainEvent::Counting);
            count_usable(
                subject,
                &req.corpus,
                req.context_size,
                need,
                &exclude,
                req.spec.steps,
                req.spec.batch,
            )?;
            h.contexts_per_forward = req.contexts_per_forward;
            let bytes = std::fs::read(&req.corpus).map_err(|e| Error::Read {
                path: req.corpus.clone(),
                source: e,
            })?;
            harvest = Some(h);
            format!(
                "model {} | hook {hook} | corpus {} | context {} | buffer {}",
                subject.home.display(),
                crate::content_hash(&bytes),
                req.context_size,
                req.buffer
            )
        }
    };
    let held_out = match &req.eval_corpus {
        Some(p) => Some(subject.contexts(p, req.context_size, req.eval_contexts.max(1))?),
        None => None,
    };
    let command = "sae train";
    let mut run = if req.resume {
        if !req.out.join(MANIFEST).is_file() {
            return Err(Error::NothingToResume {
                path: req.out.clone(),
            });
        }
        let ck = req.out.join(CHECKPOINT);
        // Refuse a foreign checkpoint before the folder is touched.
        let probe = patchclamp_lab::sae::train::Trainer::new(
            req.spec.clone(),
            &vec![0.0; req.spec.batch * req.spec.d_in],
        )?;
        patchclamp_lab::sae::checkpoint::check(&probe, &identity, &ck)?;
        RunDir::resume(&req.out, command)?
    } else {
        RunDir::create(&req.out, command, req.force)?
    };
    run.set_experiment_hash(crate::content_hash(identity.as_bytes()))?;
    let ck = run.file(CHECKPOINT)?;
    let log_path = run.file(LOG)?;
    let opts = SaeRunOptions {
        checkpoint: Some(&ck),
        checkpoint_every: req.checkpoint_every,
        resume: req.resume,
        identity,
        stop_after: None,
    };
    on_event(SaeTrainEvent::Start {
        steps: req.spec.steps,
        from: 0,
    });
    let mut log: Vec<StepStats> = vec![];
    let mut evals: Vec<EvalRecord> = vec![];
    let mut eval_error: Option<patchclamp_lab::Error> = None;
    let eval_every = req.eval_every;
    let hook_name = hook.to_string();
    let log_every = req.log_every;
    let steps = req.spec.steps;
    let mut next = |rows: usize| -> patchclamp_lab::Result<Option<Vec<f32>>> {
        match (&mut harvest, &mut store) {
            (Some(h), _) => h.next_batch(rows),
            (None, Some(s)) => s.next_batch(rows),
            (None, None) => unreachable!("one source is set"),
        }
    };
    let mut speed = 0.0;
    let (tr, _) = run::train(req.spec.clone(), &mut next, &opts, |e| match e {
        SaeEvent::Step {
            stats,
            tokens_per_s,
            trainer,
        } => {
            speed = tokens_per_s;
            if let Some(ctx) = &held_out {
                let due = stats.step == steps
                    || (eval_every > 0 && stats.step.is_multiple_of(eval_every));
                if eval_error.is_none() && due {
                    match held_out_eval(model, trainer, &hook_name, ctx, &exclude) {
                        Ok(m) => evals.push(EvalRecord {
                            step: stats.step,
                            ce_loss_score: m.ce_loss_score,
                            delta_lm_loss: m.delta_lm_loss,
                            kl_div_score: m.kl_div_score,
                            explained_variance: m.explained_variance,
                            l0: m.l0,
                        }),
                        Err(e) => eval_error = Some(e),
                    }
                }
            }
            if stats.step.is_multiple_of(log_every) || stats.step == steps || stats.step == 1 {
                log.push(*stats);
            }
            on_event(SaeTrainEvent::Step {
                stats,
                tokens_per_s,
            });
        }
        SaeEvent::Resuming { step } => on_event(SaeTrainEvent::Resuming { step }),
        SaeEvent::Checkpoint { .. } => {}
    })?;
    if let Some(e) = eval_error {
        return Err(e.into());
    }
    // A resumed run's log: the earlier lines, then this run's.
    let mut lines_out = String::new();
    if req.resume {
        if let Ok(old) = std::fs::read_to_string(&log_path) {
            let first_new = log.first().map_or(u64::MAX, |s| s.step);
            for l in old.lines() {
                if let Ok(s) = serde_json::from_str::<StepStats>(l) {
                    if s.step < first_new {
                        lines_out.push_str(l);
                        lines_out.push('\n');
                    }
                }
            }
        }
    }
    for s in &log {
        lines_out.push_str(&serde_json::to_string(s)?);
        lines_out.push('\n');
    }
    run.write(LOG, lines_out.as_bytes())?;
    let full_log: Vec<StepStats> = lines_out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut meta = serde_json::Map::new();
    meta.insert(
        "model_name".into(),
        subject.home.display().to_string().into(),
    );
    meta.insert("context_size".into(), req.context_size.into());
    meta.insert(
        "prepend_bos".into(),
        model.cfg.bos_token_id.is_some().into(),
    );
    meta.insert("exclude_special_tokens".into(), true.into());
    meta.insert(
        "dataset_path".into(),
        req.corpus.display().to_string().into(),
    );
    let sae = tr.to_sae(&hook.to_string(), meta, model.device())?;
    let mut sae = sae;
    if hook.head_dim().is_some() {
        sae.cfg.reshape_hook_z = true;
        sae.cfg
            .raw
            .insert("reshape_activations".into(), "hook_z".into());
    }
    for f in [
        patchclamp_core::sae::SAE_WEIGHTS,
        patchclamp_core::sae::SAE_SPARSITY,
        patchclamp_core::sae::SAE_CFG,
    ] {
        run.file(&format!("{SAE_DIR}/{f}"))?;
    }
    let sae_dir = run.root().join(SAE_DIR);
    sae.save(&sae_dir)?;
    let outcome = SaeTrainOutcome {
        command: req.command.clone(),
        hook: hook.to_string(),
        corpus: match &req.activations {
            Some(d) => format!("activation store {}", d.display()),
            None => req.corpus.display().to_string(),
        },
        context_size: req.context_size,
        spec: req.spec.clone(),
        harvested_tokens: harvest.as_ref().map_or(tr.tokens, |h| h.harvested),
        dead: tr.dead(),
        log: full_log.clone(),
        evals,
    };
    let vocab = subject.vocab();
    crate::write_outcome(
        &mut run,
        &outcome,
        &vocab,
        &subject.home.display().to_string(),
    )?;
    let lines = outcome.summary_lines(&vocab);
    let dir = run.root().to_path_buf();
    run.finish()?;
    Ok(SaeTrainDone {
        report: dir.join("report.html"),
        sae: dir.join(SAE_DIR),
        dir,
        lines,
        last: *full_log.last().expect("at least one step"),
        tokens_per_s: speed,
    })
}

/// Evaluates the SAE in `sae_dir` on `subject` over the first `n` contexts of `corpus`;
/// writes the report into `out` when given.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    subject: &Subject,
    sae_dir: &Path,
    corpus: &Path,
    context_size: usize,
    n: usize,
    batch: usize,
    out: Option<(&Path, bool)>,
    on_batch: impl FnMut(usize, usize),
) -> Result<(crate::outcomes::SaeEvalOutcome, Option<PathBuf>)> {
    let sae = Arc::new(Sae::load(sae_dir, subject.model.device())?);
    let splice = patchclamp_core::Splice::new(sae.clone(), false)?;
    splice.check(&subject.model.cfg)?;
    let contexts = subject.contexts(corpus, context_size, n)?;
    if let Some((dir, force)) = out {
        run_dir::outside_model(dir, &subject.home)?;
        run_dir::check(dir, "sae eval", force)?;
    }
    let metrics = patchclamp_lab::sae::eval::evaluate(
        &subject.model,
        &sae,
        &contexts,
        batch,
        &subject.special_tokens(),
        on_batch,
    )?;
    let outcome = crate::outcomes::SaeEvalOutcome {
        sae: sae_dir.display().to_string(),
        architecture: sae.cfg.architecture_name().into(),
        hook: splice.at.base().to_string(),
        contexts: contexts.len(),
        context_size,
        metrics,
    };
    let report = match out {
        Some((dir, force)) => {
            let mut run = RunDir::create(dir, "sae eval", force)?;
            crate::write_outcome(
                &mut run,
                &outcome,
                &subject.vocab(),
                &subject.home.display().to_string(),
            )?;
            run.finish()?;
            Some(dir.join("report.html"))
        }
        None => None,
    };
    Ok((outcome, report))
}

/// Feature dashboards of the SAE in `sae_dir` over the first `n` contexts of `corpus`, written
/// into `out`: `index.html`, one `features/<latent>.html` per latent, and `neuronpedia.json`
/// (SAEDashboard's batch and field names).
#[allow(clippy::too_many_arguments)]
pub fn features(
    subject: &Subject,
    sae_dir: &Path,
    corpus: &Path,
    context_size: usize,
    n: usize,
    batch: usize,
    spec: &patchclamp_lab::sae::features::FeatureSpec,
    out: &Path,
    force: bool,
    on_batch: impl FnMut(usize, usize),
) -> Result<(PathBuf, Vec<String>)> {
    use crate::html::esc;
    let sae = Arc::new(Sae::load(sae_dir, subject.model.device())?);
    patchclamp_core::Splice::new(sae.clone(), true)?.check(&subject.model.cfg)?;
    let contexts = subject.contexts(corpus, context_size, n)?;
    run_dir::outside_model(out, &subject.home)?;
    run_dir::check(out, "sae features", force)?;
    let f = patchclamp_lab::sae::features::features(
        &subject.model,
        &sae,
        &contexts,
        batch,
        &subject.special_tokens(),
        spec,
        on_batch,
    )?;
    let vocab = subject.vocab();
    let mut run = RunDir::create(out, "sae features", force)?;
    let tok = |t: u32| vocab.show(t);
    // One colour scale per latent: white to orange at its maximum.
    let shade = |v: f32, max: f32| -> String {
        let a = if max > 0.0 {
            (v / max).clamp(0.0, 1.0)
        } else {
            0.0
        };
        format!("rgba(255,140,0,{a:.2})")
    };
    let example_html = |e: &patchclamp_lab::sae::features::Example, max: f32| -> String {
        let mut s = String::from("<div class=ex>");
        for (k, (&t, &v)) in e.tokens.iter().zip(&e.values).enumerate() {
            let b = if k == e.centre {
                " style=\"outline:1px solid #333\""
            } else {
                ""
            };
            s.push_str(&format!(
                "<span title=\"{v:.3}\" style=\"background:{}\"><span{b}>{}</span></span>",
                shade(v, max),
                esc(&tok(t))
            ));
        }
        s.push_str(&format!(" <small>max {:.3}</small></div>", e.max_value));
        s
    };
    let head = |title: &str| {
        format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}.ex{{font-family:monospace;white-space:pre;margin:2px 0}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head><body><h1>{t}</h1>", t = esc(title))
    };
    let mut index = head(&format!("SAE features at {}", f.hook));
    index.push_str(&format!(
        "<p>{} · {} latents over {} tokens ({} contexts of {}); written by patchclamp {}</p><table><tr><th>latent</th><th>density</th><th>max</th><th>top context</th><th>raises</th></tr>",
        esc(&sae_dir.display().to_string()),
        f.features.len(),
        f.tokens,
        contexts.len(),
        context_size,
        env!("CARGO_PKG_VERSION")
    ));
    let mut np_features = vec![];
    for feat in &f.features {
        let j = feat.index;
        let mut page = head(&format!("latent {j} at {}", f.hook));
        page.push_str(&format!(
            "<p><a href=\"../index.html\">all latents</a> · fires on {:.4}% of tokens · max activation {:.4}</p>",
            100.0 * feat.frac_nonzero,
            feat.max_activation
        ));
        if !feat.pos_tokens.is_empty() {
            let list = |v: &[(u32, f32)]| {
                v.iter()
                    .map(|(t, w)| format!("<code>{}</code> {w:+.3}", esc(&tok(*t))))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            page.push_str(&format!(
                "<p>raises: {}</p><p>lowers: {}</p>",
                list(&feat.pos_tokens),
                list(&feat.neg_tokens)
            ));
        }
        page.push_str("<h2>Top activations</h2>");
        for e in &feat.top {
            page.push_str(&example_html(e, feat.max_activation));
        }
        for g in &feat.groups {
            page.push_str(&format!(
                "<h3>({:.3}, {:.3}] · {:.2}% of activations</h3>",
                g.bin_min,
                g.bin_max,
                100.0 * g.bin_contains
            ));
            for e in &g.examples {
                page.push_str(&example_html(e, feat.max_activation));
            }
        }
        let (xs, ys) = &feat.freq_hist;
        if !xs.is_empty() {
            let plot = LinePlot {
                title: format!("latent {j}: activations"),
                x_label: "activation".into(),
                y_label: "tokens".into(),
                series: vec![Series {
                    name: "count".into(),
                    xs: xs.iter().map(|&x| x as f64).collect(),
                    ys: ys.iter().map(|&y| y as f64).collect(),
                    dashed: false,
                }],
                markers: vec![],
                hline: None,
                y_range: None,
            };
            page.push_str(&plot.svg());
        }
        page.push_str("</body></html>");
        run.write(&format!("features/{j}.html"), page.as_bytes())?;
        index.push_str(&format!(
            "<tr><td><a href=\"features/{j}.html\">{j}</a></td><td>{:.5}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
            feat.frac_nonzero,
            feat.max_activation,
            feat.top.first().map_or(String::new(), |e| esc(&e.tokens.iter().map(|&t| tok(t)).collect::<String>())),
            feat.pos_tokens.iter().take(3).map(|(t, _)| esc(&tok(*t))).collect::<Vec<_>>().join(" ")
        ));
        // Neuronpedia's feature record (SAEDashboard's field names).
        let acts: Vec<serde_json::Value> =
            std::iter::once(("top", f32::MAX, feat.max_activation, 1.0, &feat.top))
                .map(|(_, hi, lo, c, ex)| (hi, lo, c, ex))
                .chain(
                    feat.groups
                        .iter()
                        .map(|g| (g.bin_max, g.bin_min, g.bin_contains as f32, &g.examples)),
                )
                .flat_map(|(hi, lo, c, ex)| {
                    ex.iter().map(move |e| {
                        serde_json::json!({
                            "bin_min": if hi == f32::MAX { -1.0 } else { lo as f64 },
                            "bin_max": if hi == f32::MAX { -1.0 } else { hi as f64 },
                            "bin_contains": c,
                            "tokens": e.tokens.iter().map(|&t| tok(t)).collect::<Vec<_>>(),
                            "values": e.values,
                        })
                    })
                })
                .collect();
        np_features.push(serde_json::json!({
            "feature_index": j,
            "neuron_alignment_indices": feat.alignment.iter().map(|a| a.0).collect::<Vec<_>>(),
            "neuron_alignment_values": feat.alignment.iter().map(|a| a.1).collect::<Vec<_>>(),
            "neuron_alignment_l1": feat.alignment.iter().map(|a| a.2).collect::<Vec<_>>(),
            "correlated_neurons_indices": feat.correlated_neurons.iter().map(|c| c.0).collect::<Vec<_>>(),
            "correlated_neurons_pearson": feat.correlated_neurons.iter().map(|c| c.1).collect::<Vec<_>>(),
            "pos_str": feat.pos_tokens.iter().map(|(t, _)| tok(*t)).collect::<Vec<_>>(),
            "pos_values": feat.pos_tokens.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            "neg_str": feat.neg_tokens.iter().map(|(t, _)| tok(*t)).collect::<Vec<_>>(),
            "neg_values": feat.neg_tokens.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            "frac_nonzero": feat.frac_nonzero,
            "freq_hist_data_bar_values": feat.freq_hist.0,
            "freq_hist_data_bar_heights": feat.freq_hist.1,
            "logits_hist_data_bar_values": feat.logits_hist.0,
            "logits_hist_data_bar_heights": feat.logits_hist.1,
            "activations": acts,
        }));
    }
    index.push_str("</table></body></html>");
    let layer = sae.cfg.hook_in()?.and_then(|p| p.layer());
    let batch_json = serde_json::json!({
        "model_id": subject.home.display().to_string(),
        "layer": layer,
        "sae_set": sae_dir.display().to_string(),
        "features": np_features,
        "settings": {
            "n_prompts_total": contexts.len(),
            "n_tokens_in_prompt": context_size,
            "dataset": corpus.display().to_string(),
            "n_top_examples": spec.top,
            "n_quantiles": spec.quantile_groups,
            "n_examples_per_quantile": spec.per_group,
            "context_window": spec.window,
        },
    });
    run.write(
        "neuronpedia.json",
        serde_json::to_string(&batch_json)?.as_bytes(),
    )?;
    run.write("result.json", serde_json::to_string_pretty(&f)?.as_bytes())?;
    run.write("index.html", index.as_bytes())?;
    let lines = vec![format!(
        "{} latents at {} over {} tokens; dead here: {}",
        f.features.len(),
        f.hook,
        f.tokens,
        f.features.iter().filter(|x| x.frac_nonzero == 0.0).count()
    )];
    let dir = run.root().to_path_buf();
    run.finish()?;
    Ok((dir.join("index.html"), lines))
}

/// `sae contrast`: latents ranked by activation on prompts `a` minus prompts `b`.
#[derive(Serialize)]
pub struct SaeContrastOutcome {
    pub sae: String,
    pub contrast: patchclamp_lab::sae::features::Contrast,
}

impl Outcome for SaeContrastOutcome {
    fn title(&self) -> String {
        format!("SAE contrast at {}", self.contrast.hook)
    }

    fn summary_lines(&self, _vocab: &crate::Vocab) -> Vec<String> {
        let c = &self.contrast;
        let mut lines = vec![format!(
            "{} prompts vs {} ({} token): latents by mean activation difference",
            c.prompts_a, c.prompts_b, c.position
        )];
        lines.push(format!(
            "{:>8} {:>10} {:>10} {:>8} {:>8} {:>10}",
            "latent", "mean A", "mean B", "freq A", "freq B", "A − B"
        ));
        for r in c.top_a.iter().chain(c.top_b.iter()) {
            lines.push(format!(
                "{:>8} {:>10.4} {:>10.4} {:>8.3} {:>8.3} {:>+10.4}",
                r.latent, r.mean_a, r.mean_b, r.freq_a, r.freq_b, r.difference
            ));
        }
        lines
    }

    fn figures(&self, _vocab: &crate::Vocab, page: &mut crate::Page) -> Result<()> {
        let c = &self.contrast;
        let rows: Vec<&patchclamp_lab::sae::features::ContrastRow> =
            c.top_a.iter().chain(c.top_b.iter()).collect();
        page.heatmap(
            "contrast",
            "Mean activation on each prompt set of the latents that differ most (rows: latents)",
            crate::plot::Heatmap {
                title: "mean activation".into(),
                values: rows
                    .iter()
                    .flat_map(|r| [r.mean_a as f32, r.mean_b as f32])
                    .collect(),
                rows: rows.len(),
                cols: 2,
                row_labels: rows.iter().map(|r| r.latent.to_string()).collect(),
                col_labels: vec!["A".into(), "B".into()],
                x_label: "prompt set".into(),
                y_label: "latent".into(),
                colorbar_label: "mean activation".into(),
            },
        );
        Ok(())
    }
}

/// Fails unless `path` packs into at least `need` usable (non-special) tokens.
fn count_usable(
    subject: &Subject,
    path: &Path,
    size: usize,
    need: u64,
    exclude: &[u32],
    steps: u64,
    batch: usize,
) -> Result<()> {
    let mut counter = subject.packer(path, size)?;
    let (mut available, mut contexts) = (0u64, 0u64);
    while available < need {
        match counter.next_context()? {
            Some(c) => {
                contexts += 1;
                available += c.iter().filter(|t| !exclude.contains(t)).count() as u64;
            }
            None => break,
        }
    }
    if contexts == 0 {
        return Err(Error::Input(format!(
            "{} is shorter than one context of {size} tokens",
            path.display()
        )));
    }
    if available < need {
        return Err(Error::Input(format!(
            "{} holds {available} usable tokens ({contexts} contexts of {size}), fewer than the {need} the run needs ({steps} steps × batch {batch})",
            path.display()
        )));
    }
    Ok(())
}

/// Harvests `tokens` activations at `hook` from `corpus` into an activation store in `out`
/// (shards of `shard_rows`), in the order the shuffle buffer draws them.
#[allow(clippy::too_many_arguments)]
pub fn harvest(
    subject: &Subject,
    hook: HookPoint,
    corpus: &Path,
    tokens: u64,
    context_size: usize,
    buffer: usize,
    shard_rows: usize,
    seed: u64,
    out: &Path,
    force: bool,
    mut on_rows: impl FnMut(u64, u64),
) -> Result<(PathBuf, patchclamp_lab::sae::store::StoreInfo)> {
    use patchclamp_lab::sae::store::{write_info, write_shard, StoreInfo};
    let hook = HookPoint::parse_for(&hook.to_string(), &subject.model.cfg)?;
    if tokens == 0 || shard_rows == 0 {
        return Err(Error::Input(
            "--tokens and --shard-rows must be positive".into(),
        ));
    }
    run_dir::outside_model(out, &subject.home)?;
    let exclude = subject.special_tokens();
    let mut h = Harvest::new(
        &subject.model,
        hook,
        subject.packer(corpus, context_size)?,
        exclude.clone(),
        buffer,
        seed,
    )?;
    count_usable(
        subject,
        corpus,
        context_size,
        tokens,
        &exclude,
        1,
        tokens as usize,
    )?;
    let d = h.width();
    let mut run = RunDir::create(out, "sae harvest", force)?;
    let (mut done, mut shards) = (0u64, vec![]);
    while done < tokens {
        let rows = ((tokens - done) as usize).min(shard_rows);
        let data = h
            .next_batch(rows)?
            .ok_or_else(|| Error::Input("the corpus ran out while harvesting".into()))?;
        let name = patchclamp_lab::sae::store::shard_name(shards.len());
        run.file(&name)?;
        shards.push(write_shard(run.root(), shards.len(), &data, d)?);
        done += rows as u64;
        on_rows(done, tokens);
    }
    let info = StoreInfo {
        format: "patchclamp-activation-store-1".into(),
        hook: hook.to_string(),
        d_in: d,
        rows: done,
        shards,
        source: format!("{} from {}", subject.home.display(), corpus.display()),
    };
    run.file("store.json")?;
    write_info(run.root(), &info)?;
    let dir = run.root().to_path_buf();
    run.finish()?;
    Ok((dir, info))
}
