//! The inputs every face reads the same way: a model (a folder, a cached repo id or a lab
//! checkpoint) with its tokenizer, prompts from text, text files or JSONL, and single tokens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use patchclamp_core::{Model, Tokenizer};
use patchclamp_lab::analysis::lens::LatentPrompt;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::vocab::Vocab;

/// Returns early with an input error.
macro_rules! bail {
    ($($t:tt)*) => { return Err(Error::Input(format!($($t)*))) };
}

/// Where prompts come from: texts, a file, and prompts drawn from a task.
#[derive(Clone, Default)]
pub struct PromptSource {
    /// Prompt texts (token ids separated by spaces for models without a tokenizer).
    pub texts: Vec<String>,
    /// A text file (one prompt per line) or JSONL of `{"text"|"tokens", "label"?}`.
    pub file: Option<PathBuf>,
    /// A task to draw `n` prompts from with a seed.
    pub task: Option<(patchclamp_lab::tasks::TaskSpec, usize, u64)>,
}

/// A model and its tokenizer, if it has one.
#[derive(Clone)]
pub struct Subject {
    pub model: Model,
    pub tok: Option<Tokenizer>,
    /// The folder the model was loaded from (nothing is ever written inside it).
    pub home: PathBuf,
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
    /// Loads a model by name: a Hugging Face folder, a cached repo id (`ORG/NAME`), or a lab
    /// checkpoint (`….safetensors`, no tokenizer).
    pub fn load(spec: &str, processed: bool, dev: &Device) -> Result<Subject> {
        let p = Path::new(spec);
        if p.exists() && p.extension().is_some_and(|e| e == "safetensors") {
            if processed {
                bail!("--processed applies to Hugging Face models, not lab checkpoints");
            }
            let model =
                patchclamp_lab::train::load_model(p).map_err(|source| Error::LoadCheckpoint {
                    spec: spec.to_string(),
                    source,
                })?;
            let home = p.parent().map(Path::to_path_buf).unwrap_or_default();
            return Ok(Subject {
                model,
                tok: None,
                home,
            });
        }
        let mut m = patchclamp_core::load(spec, dev).map_err(|source| Error::Load {
            spec: spec.to_string(),
            source,
        })?;
        if processed {
            m.model.process(patchclamp_core::Processing::all())?;
        }
        Ok(Subject {
            model: m.model,
            tok: m.tokenizer,
            home: m.files.dir,
        })
    }

    /// How this model's tokens are written.
    pub fn vocab(&self) -> Vocab<'_> {
        Vocab::new(self.tok.as_ref())
    }

    /// Tokens of a prompt text: the tokenizer's (with BOS as TransformerLens adds it), or ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, None)
    }

    /// [`Subject::encode`] with BOS on or off (`None`: the model's default).
    pub fn encode_with(&self, text: &str, prepend_bos: Option<bool>) -> Result<Vec<u32>> {
        let ids = match &self.tok {
            Some(t) => t.prompt(&self.model.cfg, text, prepend_bos)?,
            None => text
                .split_whitespace()
                .map(|w| w.parse::<u32>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::Input(format!("this model has no tokenizer: give prompts as token ids separated by spaces, not {text:?}"))
                })?,
        };
        self.check(&ids, text)?;
        Ok(ids)
    }

    /// Token ids given directly, checked against the model's vocabulary and context.
    pub fn ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        self.check(ids, &format!("{ids:?}"))?;
        Ok(ids.to_vec())
    }

    fn check(&self, ids: &[u32], what: &str) -> Result<()> {
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
    pub fn token(&self, text: &str) -> Result<u32> {
        let explicit = text.strip_prefix("id:").map(|n| n.parse::<u32>());
        let id = match (&self.tok, text.parse::<u32>()) {
            _ if explicit.is_some() => explicit
                .expect("some")
                .map_err(|_| Error::Input(format!("{text:?}: expected id:NUMBER")))?,
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

    /// The text of `ids` (the ids themselves, space-separated, for a model without a
    /// tokenizer, or when they do not decode).
    pub fn text_of(&self, ids: &[u32]) -> String {
        match &self.tok {
            Some(t) => t.decode(ids).unwrap_or_else(|_| format!("{ids:?}")),
            None => ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// A token's text for labels.
    pub fn show(&self, id: u32) -> String {
        self.vocab().show(id)
    }

    /// The prompts of `--prompt`, `--prompts` and `--task`, in that order; at least one.
    pub fn prompts(&self, a: &PromptSource) -> Result<Vec<Prompt>> {
        let mut out = vec![];
        for p in &a.texts {
            out.push(Prompt {
                text: p.clone(),
                tokens: self.encode(p)?,
                label: None,
            });
        }
        if let Some(path) = &a.file {
            out.extend(self.read_prompts(path)?);
        }
        if let Some((spec, n, seed)) = &a.task {
            let task = spec.task();
            // The drawn prompts are held in memory: refuse a draw that cannot fit.
            let bytes = (*n as u64)
                .saturating_mul(task.seq_len() as u64)
                .saturating_mul(8);
            if let Some(have) = patchclamp_core::sys::total_memory() {
                if bytes > have / 2 {
                    bail!(
                        "--n {n} prompts of {} tokens would need {:.1} GiB, more than half this machine's memory",
                        task.seq_len(),
                        bytes as f64 / (1u64 << 30) as f64
                    );
                }
            }
            let batch = task.batch(&mut patchclamp_core::rng::Rng::new(*seed), *n);
            for t in batch.tokens {
                self.check(&t, "drawn from --task")
                    .map_err(|e| Error::Input(format!("the task does not fit this model: {e}")))?;
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
    pub fn read_prompts(&self, path: &Path) -> Result<Vec<Prompt>> {
        let text = crate::read_text(path)?;
        let jsonl = path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "json");
        let mut out = vec![];
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", path.display(), i + 1);
            let here = |e: Error| Error::Input(format!("{at}: {e}"));
            if !jsonl {
                out.push(Prompt {
                    text: line.to_string(),
                    tokens: self.encode(line).map_err(here)?,
                    label: None,
                });
                continue;
            }
            let j: JsonPrompt =
                serde_json::from_str(line).map_err(|e| Error::Input(format!("{at}: {e}")))?;
            let (text, tokens) = match (j.text, j.tokens) {
                (Some(t), None) => {
                    let ids = self.encode(&t).map_err(here)?;
                    (t, ids)
                }
                (None, Some(ids)) => {
                    self.check(&ids, &at).map_err(here)?;
                    (format!("{ids:?}"), ids)
                }
                _ => bail!("{at}: give exactly one of \"text\" or \"tokens\""),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PairLine {
    positive: String,
    negative: String,
}

impl Subject {
    /// Contrastive pairs from JSONL: `{"positive": TEXT, "negative": TEXT}` per line.
    pub fn read_pairs(&self, path: &Path) -> Result<Vec<patchclamp_lab::steering::Pair>> {
        let text = crate::read_text(path)?;
        let mut out = vec![];
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let at = format!("{}:{}", path.display(), i + 1);
            let p: PairLine =
                serde_json::from_str(line).map_err(|e| Error::Input(format!("{at}: {e}")))?;
            let enc = |t: &str| {
                self.encode(t)
                    .map_err(|e| Error::Input(format!("{at}: {e}")))
            };
            out.push(patchclamp_lab::steering::Pair {
                positive: enc(&p.positive)?,
                negative: enc(&p.negative)?,
            });
        }
        if out.is_empty() {
            bail!("{} holds no pairs", path.display());
        }
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatentLine {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tokens: Option<Vec<u32>>,
    sets: BTreeMap<String, Vec<String>>,
}

impl Subject {
    /// A latent-language file: JSONL of `{"text"|"tokens", "sets": {"name": ["token", …]}}`,
    /// every line naming the same sets. Returns the set names and the prompts.
    pub fn read_latent(&self, path: &Path) -> Result<(Vec<String>, Vec<LatentPrompt>)> {
        let text = crate::read_text(path)?;
        let mut names: Vec<String> = vec![];
        let mut items = vec![];
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let at = format!("{}:{}", path.display(), i + 1);
            let here = |e: Error| Error::Input(format!("{at}: {e}"));
            let l: LatentLine =
                serde_json::from_str(line).map_err(|e| Error::Input(format!("{at}: {e}")))?;
            let tokens = match (l.text, l.tokens) {
                (Some(t), None) => self.encode(&t).map_err(here)?,
                (None, Some(ids)) => {
                    self.check(&ids, &at).map_err(here)?;
                    ids
                }
                _ => bail!("{at}: give exactly one of \"text\" or \"tokens\""),
            };
            let these: Vec<String> = l.sets.keys().cloned().collect();
            if names.is_empty() {
                names = these.clone();
            } else if names != these {
                bail!("{at}: token sets {these:?} differ from the first line's {names:?}");
            }
            let sets = l
                .sets
                .values()
                .map(|ts| {
                    ts.iter()
                        .map(|t| self.token(t))
                        .collect::<Result<Vec<u32>>>()
                })
                .collect::<Result<_>>()
                .map_err(here)?;
            items.push(LatentPrompt { tokens, sets });
        }
        if items.is_empty() {
            bail!("{} holds no prompts", path.display());
        }
        Ok((names, items))
    }
}
