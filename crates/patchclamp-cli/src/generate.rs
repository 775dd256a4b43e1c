//! `patchclamp generate MODEL --prompt TEXT`: text generation with a key-value cache.

use anyhow::{bail, Context};
use patchclamp_core::generate::{generate_with, GenerateSpec, Sampling};
use patchclamp_report::control_vector::ControlVector;
use patchclamp_report::outcomes::{GenerateOutcome, ShownGeneration};
use patchclamp_report::Subject;

/// Arguments of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder, a cached repo id, or a lab checkpoint (prompts as token ids).
    model: String,
    /// A prompt (repeatable; each is generated as if alone).
    #[arg(long)]
    prompt: Vec<String>,
    /// A prompt as token ids, comma-separated (repeatable; no BOS is added).
    #[arg(long, value_name = "ID,ID,…")]
    tokens: Vec<String>,
    /// The most tokens to generate after each prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sample at this temperature (default: greedy decoding).
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample from the K likeliest tokens only (needs --temperature).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample from the likeliest tokens whose probability reaches P (needs --temperature).
    #[arg(long)]
    top_p: Option<f64>,
    /// Hugging Face's repetition penalty (1 is off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// Subtracted from a token's logit per time it was generated (0 is off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f64,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also stop after this token (its text, exactly one token, or id:N; repeatable).
    #[arg(long)]
    stop_token: Vec<String>,
    /// Stop once the generated text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Do not stop at the model's end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Hold the interventions in FILE at every step (TOML `[[interventions]]` or a JSON list;
    /// positions are absolute in prompt + generated, negative ones count from the prompt's end).
    #[arg(long, value_name = "FILE")]
    intervene: Option<std::path::PathBuf>,
    /// Add a llama.cpp control vector (GGUF) at every position, times SCALE (default 1;
    /// repeatable: the files are summed).
    #[arg(long, value_name = "FILE[:SCALE]")]
    control_vector: Vec<String>,
    /// Apply control vectors to blocks A-B only (inclusive; default: 1 to the last).
    #[arg(long, value_name = "A-B")]
    layer_range: Option<String>,
    /// Record hook points matching PATTERN over the whole generation (TL names, `*` globs),
    /// joined along positions as one forward over the sequence would record them; needs --out.
    #[arg(long, value_name = "PATTERN")]
    cache: Vec<String>,
    /// Where to write the recording: one safetensors file keyed by hook name, plus `tokens`
    /// (the positions run: prompt and generated, the last generated token excluded).
    #[arg(long, value_name = "FILE.safetensors")]
    out: Option<std::path::PathBuf>,
    /// Prepend the BOS token to text prompts (default: the model's TransformerLens default).
    #[arg(long)]
    prepend_bos: Option<bool>,
    /// Print JSON: {"generations": [{"prompt", "prompt_tokens", "tokens", "text", "stop"}]}.
    #[arg(long)]
    json: bool,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    if a.prompt.is_empty() && a.tokens.is_empty() {
        bail!("give at least one --prompt TEXT or --tokens ID,ID,…");
    }
    if a.prompt.is_empty() && a.prepend_bos.is_some() {
        bail!("--prepend-bos applies to --prompt; --tokens are used exactly as given");
    }
    if a.stop.iter().any(|s| s.is_empty()) {
        bail!("--stop '' would stop before the first token; give a non-empty string");
    }
    let interventions = match &a.intervene {
        Some(path) => crate::run::read_interventions(path)?,
        None => vec![],
    };
    if a.cache.is_empty() != a.out.is_none() {
        bail!("--cache and --out go together: --cache PATTERN --out FILE.safetensors");
    }
    if a.out.is_some() && a.prompt.len() + a.tokens.len() != 1 {
        bail!("--cache records one generation: give exactly one --prompt or --tokens");
    }
    if a.layer_range.is_some() && a.control_vector.is_empty() {
        bail!("--layer-range applies to --control-vector");
    }
    let range = match &a.layer_range {
        Some(r) => Some(layer_range(r).context("--layer-range")?),
        None => None,
    };
    let s = Subject::load(&a.model, false, &crate::device())?;
    let target = match &a.out {
        Some(out) => Some(patchclamp_report::outcomes::CacheTarget::check(
            out, &s.home,
        )?),
        None => None,
    };
    let mut record = vec![];
    let all = patchclamp_core::HookPoint::all(&s.model.cfg);
    for pattern in &a.cache {
        let sel = patchclamp_core::Selector::parse(pattern)
            .with_context(|| format!("--cache {pattern}"))?;
        for p in sel
            .resolve(&all, &s.model.cfg)
            .with_context(|| format!("--cache {pattern}"))?
        {
            if !record.contains(&p) {
                record.push(p);
            }
        }
    }
    let mut interventions = interventions;
    for spec in &a.control_vector {
        let (file, scale) = match spec.rsplit_once(':') {
            Some((f, sc)) if sc.parse::<f64>().is_ok() => (f, sc.parse::<f64>()?),
            _ => (spec.as_str(), 1.0),
        };
        if !scale.is_finite() {
            bail!("--control-vector {spec}: the scale must be finite");
        }
        let cv = ControlVector::read(std::path::Path::new(file))?;
        let cfg = &s.model.cfg;
        interventions.extend(cv.interventions(scale, range, cfg.n_layers, cfg.d_model)?);
    }
    let mut prompts = vec![];
    for text in &a.prompt {
        let ids = s.encode_with(text, a.prepend_bos).context("--prompt")?;
        prompts.push((text.clone(), ids));
    }
    for list in &a.tokens {
        let ids: Vec<u32> = list
            .split(',')
            .map(|t| t.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                anyhow::anyhow!("--tokens {list:?}: expected comma-separated token ids")
            })?;
        prompts.push((format!("{ids:?}"), s.ids(&ids).context("--tokens")?));
    }
    let mut stop_tokens: Vec<u32> = a
        .stop_token
        .iter()
        .map(|t| s.token(t).context("--stop-token"))
        .collect::<anyhow::Result<_>>()?;
    if !a.ignore_eos {
        stop_tokens.extend(s.model.cfg.eos_token_id);
    }
    let spec = GenerateSpec {
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
            frequency_penalty: a.frequency_penalty,
            seed: a.seed,
        },
        stop_tokens,
    };
    spec.validate(&s.model.cfg)?;
    let text = |ids: &[u32]| -> String {
        match &s.tok {
            Some(t) => t.decode(ids).unwrap_or_else(|_| format!("{ids:?}")),
            None => ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    let mut generations = vec![];
    for (prompt, ids) in prompts {
        let mut sofar = vec![];
        let (g, recorded) = generate_with(&s.model, &ids, &spec, &interventions, &record, |t| {
            // Decoding the text so far is only needed to look for stop strings.
            if a.stop.is_empty() {
                return true;
            }
            sofar.push(t);
            let so_far = text(&sofar);
            !a.stop.iter().any(|stop| so_far.contains(stop))
        })?;
        if let Some(t) = &target {
            let ran: Vec<u32> = ids
                .iter()
                .chain(&g.tokens[..g.tokens.len() - 1])
                .copied()
                .collect();
            let tokens = candle_core::Tensor::new(ran.as_slice(), &crate::device())?
                .to_dtype(candle_core::DType::I64)?
                .unsqueeze(0)?;
            t.write(&recorded, tokens)?;
        }
        generations.push(ShownGeneration {
            prompt,
            prompt_tokens: ids,
            text: text(&g.tokens),
            tokens: g.tokens,
            stop: g.stop,
        });
    }
    let outcome = GenerateOutcome { generations };
    if a.json {
        crate::print(&serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    for g in &outcome.generations {
        crate::print(&format!("{:?} → {:?} ({:?})", g.prompt, g.text, g.stop));
    }
    Ok(())
}

/// `A-B` (inclusive, A ≤ B) or a single block `A`.
pub fn layer_range(text: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| anyhow::anyhow!("{text:?}: expected A-B with block numbers A ≤ B"))
    };
    let (a, b) = match text.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(text)?, parse(text)?),
    };
    if a > b {
        bail!("{text:?}: the range is empty (A must not exceed B)");
    }
    Ok((a, b))
}
