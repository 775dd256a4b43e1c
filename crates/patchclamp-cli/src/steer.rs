//! `patchclamp steer extract`: steering vectors from contrastive pairs, written as a llama.cpp
//! control vector (GGUF) and as safetensors; `steer sweep`: generations under a vector at
//! several scales, side by side in a report.

use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_lab::steering::{extract_at, sweep, Method, SweepSpec};
use patchclamp_report::control_vector::ControlVector;
use patchclamp_report::outcomes::{SweepColumn, SweepOutcome};
use patchclamp_report::run_dir::RunDir;
use patchclamp_report::Subject;

/// `steer` subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Extract one vector per block from contrastive pairs (JSONL {"positive": …, "negative": …}).
    Extract(ExtractArgs),
    /// Generate under a control vector at several scales; report.html shows them side by side.
    Sweep(Box<SweepArgs>),
    /// Fit Linear-AcT maps from source to target prompts at one hook point (per-unit 1-D transport).
    FitAct(FitActArgs),
}

/// Arguments of `steer fit-act`.
#[derive(clap::Args)]
pub struct FitActArgs {
    /// A model folder, a cached repo id, or a lab checkpoint (prompts as token ids).
    model: String,
    /// The prompts whose activations are moved (one per line, or JSONL).
    #[arg(long)]
    source: PathBuf,
    /// The prompts whose activations they are moved to.
    #[arg(long)]
    target: PathBuf,
    /// The hook point to fit at (every position of every prompt is a sample).
    #[arg(long, default_value = "blocks.0.hook_resid_post")]
    point: String,
    /// The map file to write (.safetensors; apply it with `generate --transport FILE:λ`).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

/// Arguments of `steer sweep`.
#[derive(clap::Args)]
pub struct SweepArgs {
    /// A model folder, a cached repo id, or a lab checkpoint (prompts as token ids).
    model: String,
    /// The control vector (GGUF), optionally times SCALE (repeatable: the files are summed).
    #[arg(long, value_name = "FILE[:SCALE]", required = true)]
    vector: Vec<String>,
    /// The scales to sweep, comma-separated (each multiplies every vector).
    #[arg(
        long,
        value_name = "S,S,…",
        allow_hyphen_values = true,
        default_value = "-2,-1,0,1,2"
    )]
    scales: String,
    #[command(flatten)]
    prompts: crate::generate::PromptArgs,
    #[command(flatten)]
    decode: crate::generate::DecodeArgs,
    #[command(flatten)]
    steer: crate::generate::SteerArgs,
    /// The metric: the fraction of generations whose text contains STRING (repeatable: any).
    #[arg(long, value_name = "STRING")]
    contains: Vec<String>,
    /// The run folder (result.json, figures, report.html, manifest.json).
    #[arg(long)]
    out: PathBuf,
    /// Reuse --out even if it holds files patchclamp did not write.
    #[arg(long)]
    force: bool,
    /// Print result.json instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Arguments of `steer extract`.
#[derive(clap::Args)]
pub struct ExtractArgs {
    /// A model folder, a cached repo id, or a lab checkpoint (prompts as token ids).
    model: String,
    /// JSONL of {"positive": TEXT, "negative": TEXT} pairs.
    #[arg(long, required_unless_present = "positives", conflicts_with_all = ["positives", "negatives"])]
    pairs: Option<PathBuf>,
    /// The positive prompts, one per line or JSONL (paired line by line with --negatives).
    #[arg(long, requires = "negatives")]
    positives: Option<PathBuf>,
    /// The negative prompts, as many as --positives.
    #[arg(long, requires = "positives")]
    negatives: Option<PathBuf>,
    /// mean (CAA), pca-diff or pca-center (repeng), llama-mean or llama-pca (llama.cpp).
    #[arg(long, default_value = "pca-diff")]
    method: String,
    /// Blocks to extract at, inclusive: A-B (llama.cpp's control vectors start at block 1).
    #[arg(long)]
    layers: String,
    /// The token each prompt is read at: -1 the last, -2 CAA's answer letter before ")".
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    position: i64,
    /// The control vector file to write (.gguf); the vectors also go to the same name with .safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn main(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Extract(a) => extract_main(a),
        Cmd::Sweep(a) => sweep_main(*a),
        Cmd::FitAct(a) => fit_act_main(a),
    }
}

fn fit_act_main(a: FitActArgs) -> anyhow::Result<()> {
    if a.out.extension().is_none_or(|e| e != "safetensors") {
        bail!("--out {} should end in .safetensors", a.out.display());
    }
    if a.out.exists() && !a.force {
        bail!("{} exists; pass --force to replace it", a.out.display());
    }
    let s = Subject::load(&a.model, false, &crate::device())?;
    patchclamp_report::run_dir::outside_model(&a.out, &s.home)?;
    let point = patchclamp_core::HookPoint::parse_for(&a.point, &s.model.cfg)
        .with_context(|| format!("--point {}", a.point))?;
    let prompts = |p: &PathBuf| -> anyhow::Result<Vec<Vec<u32>>> {
        Ok(s.read_prompts(p)?.into_iter().map(|p| p.tokens).collect())
    };
    let (source, target) = (prompts(&a.source)?, prompts(&a.target)?);
    let t = patchclamp_lab::steering::linear_act(&s.model, &source, &target, point)?;
    patchclamp_report::transport_file::write(&a.out, point, s.model.cfg.family.name(), &t)?;
    crate::print(&format!(
        "Linear-AcT maps for {} units at {point} from {} source and {} target prompts: wrote {}",
        t.scale.len(),
        source.len(),
        target.len(),
        a.out.display()
    ));
    Ok(())
}

fn sweep_main(a: SweepArgs) -> anyhow::Result<()> {
    let scales: Vec<f64> = a
        .scales
        .split(',')
        .map(|t| t.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            anyhow::anyhow!("--scales {:?}: expected comma-separated numbers", a.scales)
        })?;
    patchclamp_lab::steering::sweep::check_scales(&scales).context("--scales")?;
    if a.contains.iter().any(|c| c.is_empty()) {
        bail!("--contains '' holds in every text; give a non-empty string");
    }
    let s = Subject::load(&a.model, false, &crate::device())?;
    let cfg = &s.model.cfg;
    let vectors = crate::generate::read_control_vectors(&a.vector, "--vector", cfg)?;
    let prompts = a.prompts.read(&s)?;
    let spec = SweepSpec {
        scales,
        generate: a.decode.spec(&s)?,
        batch: a.decode.batch(),
    };
    // The folder is checked before the generations, and written after them.
    patchclamp_report::run_dir::outside_model(&a.out, &s.home)?;
    patchclamp_report::run_dir::check(&a.out, "steer sweep", a.force)?;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|(_, ids)| ids.clone()).collect();
    let text = |ids: &[u32]| s.text_of(ids);
    let contains = |_: usize, g: &patchclamp_core::generate::Generation| -> f64 {
        let t = text(&g.tokens);
        a.contains.iter().any(|c| t.contains(c.as_str())) as u8 as f64
    };
    let metric: Option<patchclamp_lab::steering::sweep::Metric> = match a.contains.is_empty() {
        true => None,
        false => Some(&contains),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "sweeping {bar:30} {pos}/{len} generations {elapsed}",
    )?);
    let runs = sweep(
        &s.model,
        &ids,
        &spec,
        |scale| {
            a.steer
                .interventions(&vectors, scale, cfg)
                .map_err(|e| patchclamp_lab::Error::Input(format!("{e:#}")))
        },
        metric,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let columns = SweepColumn::of(runs, &prompts, text);
    let range = a.steer.layer_range.as_deref().unwrap_or("1-last");
    let outcome = SweepOutcome {
        vectors: a
            .vector
            .iter()
            .map(|v| format!("{v} (blocks {range})"))
            .collect(),
        metric_name: (!a.contains.is_empty()).then(|| {
            let list: Vec<String> = a.contains.iter().map(|c| format!("{c:?}")).collect();
            format!("contains {}", list.join(" or "))
        }),
        columns,
    };
    let mut run = RunDir::create(&a.out, "steer sweep", a.force)?;
    let w = patchclamp_report::write_outcome(&mut run, &outcome, &s.vocab(), &a.model)?;
    run.finish()?;
    if a.json {
        crate::print(&w.json);
    } else {
        crate::print(&format!(
            "{}\nwrote {}/report.html",
            w.summary,
            a.out.display()
        ));
    }
    Ok(())
}

fn extract_main(a: ExtractArgs) -> anyhow::Result<()> {
    let method = Method::from_name(&a.method).context("--method")?;
    let layers = crate::generate::layer_range(&a.layers).context("--layers")?;
    if a.out.extension().is_none_or(|e| e != "gguf") {
        bail!("--out {} should end in .gguf", a.out.display());
    }
    let side = a.out.with_extension("safetensors");
    for p in [&a.out, &side] {
        if p.exists() && !a.force {
            bail!("{} exists; pass --force to replace it", p.display());
        }
    }
    let s = Subject::load(&a.model, false, &crate::device())?;
    patchclamp_report::run_dir::outside_model(&a.out, &s.home)?;
    let pairs = match (&a.pairs, &a.positives, &a.negatives) {
        (Some(p), _, _) => s.read_pairs(p)?,
        (None, Some(pos), Some(neg)) => {
            let (pos, neg) = (s.read_prompts(pos)?, s.read_prompts(neg)?);
            if pos.len() != neg.len() {
                bail!(
                    "--positives has {} prompts and --negatives {}: they pair line by line",
                    pos.len(),
                    neg.len()
                );
            }
            pos.into_iter()
                .zip(neg)
                .map(|(p, n)| patchclamp_lab::steering::Pair {
                    positive: p.tokens,
                    negative: n.tokens,
                })
                .collect()
        }
        _ => bail!("give --pairs FILE, or --positives FILE and --negatives FILE"),
    };
    let blocks: Vec<usize> = (layers.0..=layers.1).collect();
    let v = extract_at(&s.model, &pairs, &blocks, method, a.position)?;
    let cv = ControlVector::from_vectors(&v, s.model.cfg.family.name())?;
    cv.write(&a.out)?;
    cv.write_safetensors(&side)?;
    crate::print(&format!(
        "{} vectors ({:?}, blocks {}-{}) from {} pairs: wrote {} and {}",
        v.layers.len(),
        method,
        layers.0,
        layers.1,
        pairs.len(),
        a.out.display(),
        side.display()
    ));
    Ok(())
}
