//! The analysis commands (`lens`, `dla`, `heads`, `neurons`, `extremes`, `probe`, `localize`,
//! `hydra`): what they share — the model (a folder, a cached repo id or a lab checkpoint),
//! prompts (`--prompt`, a text file or JSONL), and an output folder with result.json, tensors,
//! figures and one HTML page.

pub mod dla;
pub mod extremes;
pub mod heads;
pub mod hydra;
pub mod lens;
pub mod localize;
pub mod neurons;
pub mod probe;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Tensor;
use patchclamp_core::fsutil::write_atomic;
use patchclamp_core::{Model, Tokenizer};
use serde::Deserialize;

/// Where the model comes from and where results go (every analysis command takes these).
#[derive(clap::Args)]
pub struct Common {
    /// A model folder, a cached repo id (ORG/NAME), or a `checkpoint.safetensors` written by
    /// `patchclamp train` / `patchclamp lab` (no tokenizer: give prompts as token ids).
    pub model: String,
    /// Apply TransformerLens's weight processing first.
    #[arg(long)]
    pub processed: bool,
    /// Output folder (result.json, result.safetensors, figures, report.html).
    #[arg(long)]
    pub out: PathBuf,
    /// Print the JSON result to stdout.
    #[arg(long)]
    pub json: bool,
}

/// Prompts from the command line or a file.
#[derive(clap::Args, Clone, Default)]
pub struct PromptArgs {
    /// A prompt (repeatable). Without a tokenizer: token ids separated by spaces.
    #[arg(long = "prompt")]
    pub prompt: Vec<String>,
    /// A text file (one prompt per line) or a .jsonl file of {"text": …} or {"tokens": […]}
    /// objects, optionally with a "label".
    #[arg(long = "prompts")]
    pub prompts: Option<PathBuf>,
    /// Draw prompts from the task of an experiment file (e.g. experiments/bigram-backcopy.toml).
    #[arg(long)]
    pub task: Option<PathBuf>,
    /// Prompts drawn from --task.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Seed of the prompts drawn from --task.
    #[arg(long, default_value_t = 0)]
    pub task_seed: u64,
}

impl PromptArgs {
    /// The task of `--task`, if given.
    pub fn task_spec(&self) -> anyhow::Result<Option<patchclamp_lab::tasks::TaskSpec>> {
        match &self.task {
            Some(p) => Ok(Some(patchclamp_lab::experiment::Experiment::load(p)?.task)),
            None => Ok(None),
        }
    }
}

/// A model and its tokenizer, if it has one.
pub struct Subject {
    pub model: Model,
    pub tok: Option<Tokenizer>,
}

/// One prompt as tokens, with its text and label when known.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub tokens: Vec<u32>,
    pub label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPrompt {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tokens: Option<Vec<u32>>,
    #[serde(default)]
    label: Option<String>,
}

impl Subject {
    /// Loads the model named on the command line.
    pub fn load(c: &Common) -> anyhow::Result<Subject> {
        let p = Path::new(&c.model);
        if p.is_file() && p.extension().is_some_and(|e| e == "safetensors") {
            let model = patchclamp_lab::train::load_model(p)
                .with_context(|| format!("loading the lab checkpoint {}", p.display()))?;
            if c.processed {
                bail!("--processed applies to Hugging Face models, not lab checkpoints");
            }
            return Ok(Subject { model, tok: None });
        }
        let m = crate::load_model(&c.model, c.processed)?;
        Ok(Subject {
            model: m.model,
            tok: m.tokenizer,
        })
    }

    /// Tokens of a prompt text: the tokenizer's (with BOS as TransformerLens adds it), or ids.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let ids = match &self.tok {
            Some(t) => t.prompt(&self.model.cfg, text, None)?,
            None => text
                .split_whitespace()
                .map(|w| w.parse::<u32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    anyhow::anyhow!("this model has no tokenizer: give prompts as token ids separated by spaces, not {text:?}")
                })?,
        };
        self.check(&ids, text)?;
        Ok(ids)
    }

    fn check(&self, ids: &[u32], what: &str) -> anyhow::Result<()> {
        let cfg = &self.model.cfg;
        if ids.is_empty() {
            bail!("prompt {what:?} has no tokens");
        }
        if ids.len() > cfg.n_ctx {
            bail!(
                "prompt {what:?} has {} tokens; the model's context is {}",
                ids.len(),
                cfg.n_ctx
            );
        }
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= cfg.d_vocab) {
            bail!(
                "prompt {what:?} has token id {t}, outside the vocabulary of {}",
                cfg.d_vocab
            );
        }
        Ok(())
    }

    /// The id of a single token: `id:N`, its text through the tokenizer (exactly one token, no
    /// BOS), or a number when the model has no tokenizer.
    pub fn token(&self, text: &str) -> anyhow::Result<u32> {
        let explicit = text.strip_prefix("id:").map(|n| n.parse::<u32>());
        let id = match (&self.tok, text.parse::<u32>()) {
            _ if explicit.is_some() => explicit
                .expect("some")
                .map_err(|_| anyhow::anyhow!("{text:?}: expected id:NUMBER"))?,
            (None, Ok(id)) => id,
            (None, Err(_)) => bail!("this model has no tokenizer: give the token {text:?} as an id"),
            (Some(t), _) => match t.encode(text)?.as_slice() {
                [id] => *id,
                ids => bail!("{text:?} is {} tokens {ids:?}; it must be exactly one (mind the leading space), or give id:N", ids.len()),
            },
        };
        if id as usize >= self.model.cfg.d_vocab {
            bail!(
                "token id {id} is outside the vocabulary of {}",
                self.model.cfg.d_vocab
            );
        }
        Ok(id)
    }

    /// A token's text for labels.
    pub fn show(&self, id: u32) -> String {
        match &self.tok {
            Some(t) => t.decode(&[id]).unwrap_or_else(|_| id.to_string()),
            None => id.to_string(),
        }
    }

    /// The prompts of `--prompt` and `--prompts`, in that order; at least one.
    pub fn prompts(&self, a: &PromptArgs) -> anyhow::Result<Vec<Prompt>> {
        let mut out = vec![];
        for p in &a.prompt {
            out.push(Prompt {
                text: p.clone(),
                tokens: self.encode(p)?,
                label: None,
            });
        }
        if let Some(path) = &a.prompts {
            out.extend(self.read_prompts(path)?);
        }
        if let Some(spec) = a.task_spec()? {
            let task = spec.task();
            let batch = task.batch(&mut patchclamp_core::rng::Rng::new(a.task_seed), a.n);
            for t in batch.tokens {
                self.check(&t, "drawn from --task")
                    .context("the task does not fit this model")?;
                out.push(Prompt {
                    text: format!("{t:?}"),
                    tokens: t,
                    label: None,
                });
            }
        }
        if out.is_empty() {
            bail!("no prompts: pass --prompt TEXT, --prompts FILE or --task EXPERIMENT");
        }
        Ok(out)
    }

    /// Prompts from a text or JSONL file.
    pub fn read_prompts(&self, path: &Path) -> anyhow::Result<Vec<Prompt>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let jsonl = path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "json");
        let mut out = vec![];
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            if !jsonl {
                out.push(Prompt {
                    text: line.to_string(),
                    tokens: self.encode(line).with_context(at)?,
                    label: None,
                });
                continue;
            }
            let j: JsonPrompt = serde_json::from_str(line).with_context(at)?;
            let (text, tokens) = match (j.text, j.tokens) {
                (Some(t), None) => {
                    let ids = self.encode(&t).with_context(at)?;
                    (t, ids)
                }
                (None, Some(ids)) => {
                    self.check(&ids, &at()).with_context(at)?;
                    (format!("{ids:?}"), ids)
                }
                _ => bail!("{}: give exactly one of \"text\" or \"tokens\"", at()),
            };
            out.push(Prompt {
                text,
                tokens,
                label: j.label,
            });
        }
        if out.is_empty() {
            bail!("{} holds no prompts", path.display());
        }
        Ok(out)
    }
}

/// An analysis's output folder, written at the end (each file atomically).
pub struct Output {
    pub title: String,
    pub result: serde_json::Value,
    /// Named tensors for result.safetensors: `(name, shape, values)`.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Figures: `(file stem, caption, svg, optional png)`.
    pub figures: Vec<(String, String, String, Option<Vec<u8>>)>,
    /// Extra HTML (tables) for the page, after the figures.
    pub html: String,
}

impl Output {
    /// An empty output for an analysis titled `title`.
    pub fn new(title: impl Into<String>, result: serde_json::Value) -> Self {
        Output {
            title: title.into(),
            result,
            tensors: vec![],
            figures: vec![],
            html: String::new(),
        }
    }

    /// Adds a `[rows, cols]` grid as a tensor and a heatmap figure.
    pub fn heatmap(&mut self, stem: &str, caption: &str, heat: crate::plot::Heatmap) {
        self.tensors.push((
            stem.to_string(),
            vec![heat.rows, heat.cols],
            heat.values.clone(),
        ));
        self.figures.push((
            stem.to_string(),
            caption.to_string(),
            heat.svg(),
            Some(heat.png()),
        ));
    }

    /// Adds a line chart.
    pub fn line(&mut self, stem: &str, caption: &str, plot: crate::plot::line::LinePlot) {
        self.figures
            .push((stem.to_string(), caption.to_string(), plot.svg(), None));
    }

    /// Writes everything into `c.out` and prints the JSON (with `--json`) or `summary`.
    pub fn write(self, c: &Common, summary: &str) -> anyhow::Result<()> {
        let dir = &c.out;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_string_pretty(&self.result)?;
        write_atomic(&dir.join("result.json"), text.as_bytes())?;
        if !self.tensors.is_empty() {
            let dev = candle_core::Device::Cpu;
            let ts = self
                .tensors
                .iter()
                .map(|(k, shape, v)| {
                    Ok((
                        k.as_str(),
                        Tensor::from_vec(v.clone(), shape.as_slice(), &dev)?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let bytes = safetensors::serialize(ts.iter().map(|(k, t)| (*k, t)), None)?;
            write_atomic(&dir.join("result.safetensors"), &bytes)?;
        }
        let mut page = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:2px 6px}}figure{{margin:1em 0}}</style></head><body><h1>{t}</h1><p>model <code>{m}</code>; written by patchclamp {v}</p><pre>{s}</pre>",
            t = esc(&self.title),
            m = esc(&c.model),
            v = env!("CARGO_PKG_VERSION"),
            s = esc(summary),
        );
        for (stem, caption, svg, png) in &self.figures {
            write_atomic(&dir.join(format!("{stem}.svg")), svg.as_bytes())?;
            if let Some(png) = png {
                write_atomic(&dir.join(format!("{stem}.png")), png)?;
            }
            page.push_str(&format!(
                "<figure>{svg}<figcaption>{}</figcaption></figure>",
                esc(caption)
            ));
        }
        page.push_str(&self.html);
        page.push_str("<p>Numbers: <a href=\"result.json\">result.json</a></p></body></html>");
        write_atomic(&dir.join("report.html"), page.as_bytes())?;
        if c.json {
            println!("{text}");
        } else {
            println!("{summary}\nwrote {}/report.html", dir.display());
        }
        Ok(())
    }
}

/// HTML-escapes text.
pub fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A `rows × cols` heatmap of `grid` with `L{l}` rows and `H{h}` columns.
pub fn layer_head_map(title: &str, grid: &[Vec<f64>], colorbar: &str) -> crate::plot::Heatmap {
    let rows = grid.len();
    let cols = grid.first().map_or(0, |r| r.len());
    crate::plot::Heatmap {
        title: title.to_string(),
        values: grid.iter().flatten().map(|&x| x as f32).collect(),
        rows,
        cols,
        row_labels: (0..rows).map(|l| format!("L{l}")).collect(),
        col_labels: (0..cols).map(|h| format!("H{h}")).collect(),
        x_label: "head".into(),
        y_label: "layer".into(),
        colorbar_label: colorbar.to_string(),
    }
}

/// A progress bar over `len` units named `what` (hidden when not a terminal).
pub fn progress(len: u64, what: &str) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{human_pos}}/{{human_len}} {{elapsed}} ({{per_sec}})"
    ))?);
    Ok(bar)
}
