//! `patchclamp bench`: speed and memory, printed as numbers (no timed assertions anywhere).

use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Tensor;
use patchclamp_core::model::Weights;
use patchclamp_core::rng::Rng;
use patchclamp_core::{Config, Hooks, Input, Model};

/// What to benchmark.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Forward pass: plain, and caching every hook point.
    Forward(ForwardArgs),
    /// Activation-patching sweeps (resid_pre per position, z per head) on given token ids.
    Patch(PatchArgs),
    /// Training steps per second of attention-only models (compare with tools/bench/train.py).
    Train(TrainArgs),
    /// Generation: prefill and decode time, plain and steered (compare with tools/bench/generate.py).
    Generate(GenerateArgs),
    /// SAE training steps on stored activations, or harvest + training from text on a random
    /// model (compare with tools/bench/sae.py).
    Sae(SaeArgs),
}

/// Arguments of `bench sae`.
#[derive(clap::Args)]
pub struct SaeArgs {
    /// An activation store (tools/bench/sae.py writes one); or --corpus to harvest.
    #[arg(long, required_unless_present = "corpus")]
    activations: Option<std::path::PathBuf>,
    /// Harvest from this text through a random model of --shape at --hook instead.
    #[arg(long, conflicts_with = "activations")]
    corpus: Option<std::path::PathBuf>,
    #[arg(long, default_value = "gpt2-small")]
    shape: String,
    #[arg(long, default_value = "blocks.6.hook_resid_post")]
    hook: String,
    #[arg(long, default_value_t = 24576)]
    d_sae: usize,
    #[arg(long, default_value_t = 32)]
    k: usize,
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: u64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

/// Arguments of `bench generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Random model shape (`gpt2-small` or `tiny`) unless --model is given.
    #[arg(long, default_value = "gpt2-small")]
    shape: String,
    /// A model folder (e.g. the one tools/bench/generate.py saves, for identical weights).
    #[arg(long)]
    model: Option<String>,
    /// JSON {"prompts": [[ids…], …], "steer": {"layer": L, "coef": C, "vector": […]}}: the
    /// prompts (one batch) and the vector added at blocks.L.hook_resid_post; default 16 random ids.
    #[arg(long, value_name = "FILE")]
    spec: Option<std::path::PathBuf>,
    /// Tokens generated after each prompt (no stop token).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = crate::default_threads(), value_parser = crate::thread_count)]
    threads: usize,
    #[arg(long)]
    json: bool,
}

/// What `bench generate` reads from --spec.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBench {
    prompts: Vec<Vec<u32>>,
    #[serde(default)]
    steer: Option<SteerBench>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SteerBench {
    layer: usize,
    coef: f64,
    vector: Vec<f64>,
}

/// Arguments of `bench patch`.
#[derive(clap::Args)]
pub struct PatchArgs {
    /// Random model shape (`gpt2-small` or `tiny`) unless --model is given.
    #[arg(long, default_value = "gpt2-small")]
    shape: String,
    /// A model folder (e.g. the one tools/bench/patching.py saves, for identical weights).
    #[arg(long)]
    model: Option<String>,
    /// Clean token ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    clean: Vec<u32>,
    /// Corrupted token ids, comma-separated (same length).
    #[arg(long, value_delimiter = ',')]
    corrupt: Vec<u32>,
    #[arg(long)]
    answer: u32,
    #[arg(long)]
    wrong: u32,
    /// Variants per forward (default: about 4096 token rows per forward).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value_t = crate::default_threads(), value_parser = crate::thread_count)]
    threads: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Sweeps to run: resid_pre (per position), z (per head).
    #[arg(long, value_delimiter = ',', default_value = "resid_pre,z")]
    sweeps: Vec<String>,
    #[arg(long)]
    json: bool,
}

/// Arguments of `bench train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// `flagship` (2 layers, d_model 64, 4 heads) or `wide` (2 layers, d_model 256, 8 heads);
    /// both on 64 positions, batch 32, vocabulary 64.
    #[arg(long, default_value = "flagship")]
    shape: String,
    /// Timed steps.
    #[arg(long, default_value_t = 50)]
    steps: u64,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    #[arg(long, default_value_t = crate::default_threads(), value_parser = crate::thread_count)]
    threads: usize,
    /// Train through the hooked forward and candle's backward (the path of steps with an
    /// intervention in force) instead of the fused step.
    #[arg(long)]
    hooked: bool,
    #[arg(long)]
    json: bool,
}

/// Arguments of `bench forward`.
#[derive(clap::Args)]
pub struct ForwardArgs {
    /// Random model shape: `gpt2-small` (12 layers, d_model 768) or `tiny` (2 layers, d_model 128).
    #[arg(long, default_value = "gpt2-small")]
    shape: String,
    /// Benchmark a model from disk instead of a random one.
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed iterations per mode (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// CPU threads for the kernels.
    #[arg(long, default_value_t = crate::default_threads(), value_parser = crate::thread_count)]
    threads: usize,
    /// Also time a forward that records only the points this pattern names (mode
    /// `cache-filtered`, e.g. 'blocks.*.hook_resid_pre').
    #[arg(long, value_name = "PATTERN")]
    cache: Option<String>,
    #[arg(long)]
    json: bool,
}

/// The tiny benchmark shape (tools/bench/forward.py builds the same).
pub fn tiny() -> Config {
    Config::gpt2_like(2, 128, 4, 1000, 256)
}

pub fn main(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Forward(a) => forward(a),
        Cmd::Patch(a) => patch(a),
        Cmd::Train(a) => train(a),
        Cmd::Generate(a) => generate(a),
        Cmd::Sae(a) => sae(a),
    }
}

/// One `bench sae` measurement.
#[derive(serde::Serialize)]
struct SaeRow {
    framework: &'static str,
    source: String,
    d_in: usize,
    d_sae: usize,
    k: usize,
    batch: usize,
    steps: u64,
    ms_per_step: f64,
    tokens_per_s: f64,
    peak_rss_mib: Option<f64>,
    threads: usize,
}

fn sae(a: SaeArgs) -> anyhow::Result<()> {
    use patchclamp_lab::sae::train::{BDecInit, TrainArch, TrainSpec, Trainer};
    use patchclamp_lab::train::{LrSchedule, OptimSpec};
    crate::set_threads(Some(a.threads));
    if a.steps == 0 || a.batch == 0 {
        bail!("--steps and --batch must be positive");
    }
    let model;
    let mut store = None;
    let mut harvest = None;
    let (d_in, source) = match (&a.activations, &a.corpus) {
        (Some(dir), _) => {
            let r = patchclamp_lab::sae::store::StoreReader::open(dir)?;
            let d = r.info.d_in;
            store = Some(r);
            (d, format!("store {}", dir.display()))
        }
        (None, Some(corpus)) => {
            model = bench_model(&a.shape, &None)?;
            let hook = patchclamp_core::HookPoint::parse_for(&a.hook, &model.cfg)?;
            // A random model has no tokenizer: the corpus's bytes are the tokens.
            let text = std::fs::read(corpus).with_context(|| corpus.display().to_string())?;
            let vocab = model.cfg.d_vocab as u32;
            let docs: Vec<Vec<u32>> = text
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| l.iter().map(|&b| b as u32 % vocab).collect())
                .collect();
            let packer = patchclamp_lab::sae::harvest::Packer::new(
                Box::new(docs.into_iter().cycle().take(1 << 22).map(Ok)),
                128,
                Some(0),
                Some(0),
            )?;
            let h = patchclamp_lab::sae::harvest::Harvest::new(
                &model,
                hook,
                packer,
                vec![0],
                4 * a.batch,
                0,
            )?;
            let d = h.width();
            harvest = Some(h);
            (
                d,
                format!(
                    "harvest {} at {} of a random {}",
                    corpus.display(),
                    a.hook,
                    a.shape
                ),
            )
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let mut next = |rows: usize| -> anyhow::Result<Vec<f32>> {
        let got = match (&mut store, &mut harvest) {
            (Some(s), _) => s.next_batch(rows)?,
            (None, Some(h)) => h.next_batch(rows)?,
            _ => None,
        };
        got.context("the activations ran out: store more rows or time fewer steps")
    };
    let spec = TrainSpec {
        arch: TrainArch::Topk { k: a.k },
        d_in,
        d_sae: a.d_sae,
        batch: a.batch,
        steps: a.steps + 1,
        lr: LrSchedule::constant(3e-4),
        optim: OptimSpec::default(),
        unit_decoder: true,
        decoder_init_norm: 0.1,
        tied: false,
        b_dec_init: BDecInit::Zeros,
        aux_coef: 1.0,
        dead_window: 1000,
        normalize: false,
        seed: 0,
    };
    reset_peak_rss();
    let first = next(a.batch)?;
    let mut tr = Trainer::new(spec, &first)?;
    tr.step(&first)?; // warm-up
    let t0 = std::time::Instant::now();
    for _ in 0..a.steps {
        let b = next(a.batch)?;
        tr.step(&b)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let row = SaeRow {
        framework: "patchclamp",
        source,
        d_in,
        d_sae: a.d_sae,
        k: a.k,
        batch: a.batch,
        steps: a.steps,
        ms_per_step: 1e3 * secs / a.steps as f64,
        tokens_per_s: (a.steps * a.batch as u64) as f64 / secs,
        peak_rss_mib: rss_kib("VmHWM:").map(|k| k as f64 / 1024.0),
        threads: a.threads,
    };
    if a.json {
        crate::print(&serde_json::to_string(&row)?);
    } else {
        crate::print(&format!(
            "TopK SAE {} → {} (k {}), batch {}: {:.0} ms/step, {:.0} tokens/s, peak RSS {:.0} MiB ({})",
            d_in, a.d_sae, a.k, a.batch, row.ms_per_step, row.tokens_per_s, row.peak_rss_mib.unwrap_or(f64::NAN), row.source
        ));
    }
    Ok(())
}

/// A random model of a bench shape, or the model at `spec`.
fn bench_model(shape: &str, spec: &Option<String>) -> anyhow::Result<Model> {
    Ok(match spec {
        Some(spec) => crate::load_model(spec, false)?.model,
        None => {
            let cfg = match shape {
                "gpt2-small" => Config::gpt2_small(),
                "tiny" => tiny(),
                other => bail!("unknown --shape '{other}'; use gpt2-small or tiny"),
            };
            Model::new(cfg.clone(), Weights::random(&cfg, 0, &crate::device())?)?
        }
    })
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    use patchclamp_core::generate::{generate_batch, GenerateSpec, Sampling};
    crate::set_threads(Some(a.threads));
    if a.iters == 0 || a.max_new_tokens < 2 {
        bail!("--iters must be positive and --max-new-tokens at least 2");
    }
    let model = bench_model(&a.shape, &a.model)?;
    let cfg = &model.cfg;
    let bench: GenerateBench = match &a.spec {
        Some(path) => serde_json::from_str(&patchclamp_report::read_text(path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => {
            let mut rng = Rng::new(1);
            GenerateBench {
                prompts: vec![(0..16)
                    .map(|_| rng.below(cfg.d_vocab as u64) as u32)
                    .collect()],
                steer: None,
            }
        }
    };
    let mut modes: Vec<(&str, Vec<patchclamp_core::Intervention>)> = vec![("plain", vec![])];
    if let Some(st) = &bench.steer {
        modes.push((
            "steered",
            vec![patchclamp_core::Intervention {
                at: patchclamp_core::HookPoint::ResidPost(st.layer),
                select: Default::default(),
                op: patchclamp_core::Op::Add {
                    vector: patchclamp_core::hooks::Values::Vector(st.vector.clone()),
                    coef: st.coef,
                },
                when: Default::default(),
                decode: None,
            }],
        ));
    }
    let spec = |n: usize| GenerateSpec {
        max_new_tokens: n,
        sampling: Sampling::default(),
        stop_tokens: vec![],
    };
    let (b, new) = (bench.prompts.len(), a.max_new_tokens);
    let mut rows = vec![];
    let median = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    for (mode, ivs) in &modes {
        reset_peak_rss();
        let (mut totals, mut prefills, mut tokens) = (vec![], vec![], vec![]);
        for i in 0..a.warmup + a.iters {
            // The prefill alone (and its first token), then the whole generation.
            let t = Instant::now();
            generate_batch(&model, &bench.prompts, &spec(1), ivs, &[], |_, _| true)?;
            let prefill = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let out = generate_batch(&model, &bench.prompts, &spec(new), ivs, &[], |_, _| true)?;
            let total = t.elapsed().as_secs_f64();
            if i >= a.warmup {
                prefills.push(prefill);
                totals.push(total);
            }
            tokens = out.into_iter().map(|(g, _)| g.tokens).collect::<Vec<_>>();
        }
        let (total, prefill) = (median(totals), median(prefills));
        rows.push(GenerateRow {
            mode,
            batch: b,
            new_tokens: new,
            threads: a.threads,
            total_s: total,
            prefill_s: prefill,
            decode_ms_per_step: 1e3 * (total - prefill) / (new - 1) as f64,
            tokens_per_s: (b * new) as f64 / total,
            peak_rss_mib: rss_kib("VmHWM").map(|k| k as f64 / 1024.0),
            tokens,
        });
    }
    if a.json {
        crate::print(&serde_json::to_string(&rows)?);
        return Ok(());
    }
    for r in rows {
        crate::print(&format!(
            "{:<8} batch {:>3}: prefill {:.1} ms, decode {:.1} ms/step, {:.0} tokens/s, peak RSS {:.0} MiB",
            r.mode,
            r.batch,
            1e3 * r.prefill_s,
            r.decode_ms_per_step,
            r.tokens_per_s,
            r.peak_rss_mib.unwrap_or(f64::NAN)
        ));
    }
    Ok(())
}

/// One `bench generate` mode (`--json`).
#[derive(serde::Serialize)]
struct GenerateRow {
    mode: &'static str,
    batch: usize,
    new_tokens: usize,
    threads: usize,
    total_s: f64,
    prefill_s: f64,
    /// (total − prefill) / (new tokens − 1): one decode step for the whole batch.
    decode_ms_per_step: f64,
    tokens_per_s: f64,
    peak_rss_mib: Option<f64>,
    /// The generated ids of each prompt (for comparing with the Python peers).
    tokens: Vec<Vec<u32>>,
}

/// The model of a `bench train` shape (tools/bench/train.py builds the same).
pub fn train_shape(shape: &str) -> anyhow::Result<patchclamp_lab::train::ModelSpec> {
    use patchclamp_lab::train::ModelSpec;
    Ok(match shape {
        "flagship" => ModelSpec::default(),
        "wide" => ModelSpec {
            d_model: 256,
            n_heads: 8,
            ..ModelSpec::default()
        },
        other => bail!("unknown --shape '{other}'; use flagship or wide"),
    })
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    use patchclamp_lab::tasks::RepeatedSegments;
    use patchclamp_lab::train::{LrSchedule, OptimSpec, TrainSpec, Trainer};
    crate::set_threads(Some(a.threads));
    crate::training_threads();
    if a.steps == 0 {
        bail!("--steps must be positive");
    }
    let task = RepeatedSegments::default();
    let cfg = train_shape(&a.shape)?
        .config(64, 64)
        .map_err(anyhow::Error::msg)?;
    let spec = TrainSpec {
        steps: a.steps + a.warmup,
        batch: 32,
        seed: 0,
        optim: OptimSpec::default(),
        lr: LrSchedule::constant(1e-3),
        clip: None,
        eval_every: u64::MAX,
        eval_batch: 1,
        checkpoint_every: 0,
    };
    let mut tr = Trainer::new(cfg.clone(), 0, spec)?;
    tr.set_fused(!a.hooked);
    let path = if tr.fused_at(0) { "fused" } else { "hooked" };
    for _ in 0..a.warmup {
        tr.train_step(&task)?;
    }
    let t0 = std::time::Instant::now();
    for _ in 0..a.steps {
        tr.train_step(&task)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let row = TrainRow {
        shape: a.shape.clone(),
        framework: "patchclamp",
        params: cfg.n_params(),
        steps_per_s: a.steps as f64 / secs,
        ms_per_step: 1e3 * secs / a.steps as f64,
        threads: a.threads,
        path,
    };
    if a.json {
        crate::print(&serde_json::to_string(&row)?);
    } else {
        crate::print(&format!(
            "{} ({} params, {path} step): {:.1} steps/s ({:.1} ms/step), {} threads",
            a.shape,
            cfg.n_params(),
            a.steps as f64 / secs,
            1e3 * secs / a.steps as f64,
            a.threads
        ));
    }
    Ok(())
}

fn forward(a: ForwardArgs) -> anyhow::Result<()> {
    crate::set_threads(Some(a.threads));
    if a.iters == 0 || a.batch == 0 || a.seq == 0 {
        bail!("--iters, --batch and --seq must be positive");
    }
    let dev = crate::device();
    let (model, label) = match &a.model {
        Some(spec) => (crate::load_model(spec, false)?.model, spec.clone()),
        None => {
            let cfg = match a.shape.as_str() {
                "gpt2-small" => Config::gpt2_small(),
                "tiny" => tiny(),
                other => bail!("unknown --shape '{other}'; use gpt2-small or tiny"),
            };
            (
                Model::new(cfg.clone(), Weights::random(&cfg, 0, &dev)?)?,
                a.shape.clone(),
            )
        }
    };
    let cfg = &model.cfg;
    let mut rng = Rng::new(1);
    let ids: Vec<u32> = (0..a.batch * a.seq)
        .map(|_| rng.below(cfg.d_vocab as u64) as u32)
        .collect();
    let input = Input {
        tokens: Tensor::from_vec(ids, (a.batch, a.seq), &dev)?,
        positions: Tensor::arange(0u32, a.seq as u32, &dev)?
            .unsqueeze(0)?
            .repeat((a.batch, 1))?,
        mask: None,
        lengths: vec![a.seq; a.batch],
        padding: Default::default(),
    };
    let base_rss = rss_kib("VmRSS");
    let mut rows = Vec::new();
    let filtered = match &a.cache {
        Some(p) => {
            let sel =
                patchclamp_core::Selector::parse(p).with_context(|| format!("--cache {p}"))?;
            sel.resolve(&patchclamp_core::HookPoint::all(cfg), cfg)
                .with_context(|| format!("--cache {p}"))?;
            Some(sel)
        }
        None => None,
    };
    let modes: &[&str] = if filtered.is_some() {
        &["plain", "cache-all", "cache-filtered"]
    } else {
        &["plain", "cache-all"]
    };
    for &mode in modes {
        reset_peak_rss();
        let bar = indicatif::ProgressBar::new((a.warmup + a.iters) as u64)
            .with_message(format!("{label} {mode}"));
        bar.set_style(indicatif::ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len}",
        )?);
        let mut times = Vec::new();
        let mut cache_bytes = 0;
        for i in 0..a.warmup + a.iters {
            let mut hooks = match (mode, &filtered) {
                ("plain", _) => Hooks::none(),
                ("cache-filtered", Some(sel)) => Hooks::none().capture(sel.clone()),
                _ => Hooks::none().capture_all(),
            };
            let t = Instant::now();
            let logits = model.forward(&input, &mut hooks)?;
            // Materialise the result so lazy work (none today) cannot hide.
            let _ = logits.dims();
            let dt = t.elapsed().as_secs_f64();
            cache_bytes = hooks.cache().nbytes();
            drop(hooks);
            if i >= a.warmup {
                times.push(dt);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        times.sort_by(|x, y| x.total_cmp(y));
        let median = times[times.len() / 2];
        let peak = rss_kib("VmHWM");
        rows.push(ForwardRow {
            model: label.clone(),
            mode,
            batch: a.batch,
            seq: a.seq,
            threads: a.threads,
            median_ms: median * 1e3,
            tokens_per_s: (a.batch * a.seq) as f64 / median,
            peak_rss_mib: peak.map(|k| k as f64 / 1024.0),
            base_rss_mib: base_rss.map(|k| k as f64 / 1024.0),
            cache_mib: cache_bytes as f64 / (1024.0 * 1024.0),
        });
    }
    if a.json {
        crate::print(&serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    crate::print(&format!(
        "{:<12} {:<10} {:>10} {:>12} {:>14} {:>12} {:>11}",
        "model", "mode", "median ms", "tokens/s", "peak RSS MiB", "base MiB", "cache MiB"
    ));
    for r in rows {
        crate::print(&format!(
            "{:<12} {:<10} {:>10.1} {:>12.0} {:>14.1} {:>12.1} {:>11.1}",
            r.model,
            r.mode,
            r.median_ms,
            r.tokens_per_s,
            r.peak_rss_mib.unwrap_or(f64::NAN),
            r.base_rss_mib.unwrap_or(f64::NAN),
            r.cache_mib
        ));
    }
    Ok(())
}

/// A `/proc/self/status` memory field in KiB (Linux only).
fn rss_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak-RSS counter (VmHWM) so each mode reports its own peak (Linux only).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn patch(a: PatchArgs) -> anyhow::Result<()> {
    use patchclamp_lab::causal::patching::{
        default_batch, sweep, Direction, Metric, PatchingConfig, Site,
    };
    crate::set_threads(Some(a.threads));
    if a.clean.is_empty() || a.iters == 0 {
        bail!("--clean ids and a positive --iters are required");
    }
    let dev = crate::device();
    let model = match &a.model {
        Some(spec) => crate::load_model(spec, false)?.model,
        None => {
            let cfg = match a.shape.as_str() {
                "gpt2-small" => Config::gpt2_small(),
                "tiny" => tiny(),
                other => bail!("unknown --shape '{other}'; use gpt2-small or tiny"),
            };
            Model::new(cfg.clone(), Weights::random(&cfg, 0, &dev)?)?
        }
    };
    let metric = Metric::LogitDiff {
        answer: a.answer,
        wrong: a.wrong,
    };
    let mut rows = Vec::new();
    for name in &a.sweeps {
        let site = match name.as_str() {
            "resid_pre" => Site::ResidPre,
            "z" => Site::Z,
            other => bail!("unknown sweep '{other}'; use resid_pre or z"),
        };
        let cfg = PatchingConfig {
            site,
            direction: Direction::Denoise,
            metric,
            batch: a.batch.unwrap_or(default_batch(a.clean.len())),
            window: 1,
        };
        let mut times = Vec::new();
        let mut result = None;
        for _ in 0..a.iters {
            let t = Instant::now();
            result = Some(sweep(&model, &a.clean, &a.corrupt, &cfg, |_, _| {})?);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|x, y| x.total_cmp(y));
        let r = result.expect("iters > 0");
        rows.push(SweepRow {
            site: name.clone(),
            median_s: times[times.len() / 2],
            variants: r.values.len(),
            n_layers: r.n_layers,
            n_cols: r.n_cols,
            values: r.values,
        });
    }
    if a.json {
        crate::print(&serde_json::to_string(&rows)?);
    } else {
        for r in rows {
            crate::print(&format!(
                "{:<10} {:>4} variants {:>9.3} s",
                r.site, r.variants, r.median_s
            ));
        }
    }
    Ok(())
}

/// One `bench train` measurement (`--json`).
#[derive(serde::Serialize)]
struct TrainRow {
    shape: String,
    framework: &'static str,
    params: usize,
    steps_per_s: f64,
    ms_per_step: f64,
    threads: usize,
    path: &'static str,
}

/// One `bench forward` measurement (`--json`).
#[derive(serde::Serialize)]
struct ForwardRow {
    model: String,
    mode: &'static str,
    batch: usize,
    seq: usize,
    threads: usize,
    median_ms: f64,
    tokens_per_s: f64,
    peak_rss_mib: Option<f64>,
    base_rss_mib: Option<f64>,
    cache_mib: f64,
}

/// One `bench patch` sweep (`--json`).
#[derive(serde::Serialize)]
struct SweepRow {
    site: String,
    median_s: f64,
    variants: usize,
    n_layers: usize,
    n_cols: usize,
    values: Vec<f32>,
}
