//! `patchclamp generate MODEL --prompt TEXT`: text generation with a key-value cache, and the
//! argument groups every generating command shares (prompts, decoding, control vectors).

use anyhow::{bail, Context};
use patchclamp_core::generate::{generate_spliced, GenerateSpec, Sampling};
use patchclamp_core::hooks::Positions;
use patchclamp_core::{Config, Intervention};
use patchclamp_report::control_vector::ControlVector;
use patchclamp_report::outcomes::{GenerateOutcome, ShownGeneration};
use patchclamp_report::Subject;

/// Arguments of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// A model folder, a cached repo id, or a lab checkpoint (prompts as token ids).
    model: String,
    #[command(flatten)]
    prompts: PromptArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Stop once the generated text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Hold the interventions in FILE at every step (TOML `[[interventions]]` or a JSON list;
    /// positions are absolute in prompt + generated, negative ones count from the prompt's end;
    /// `positions = "generated"` and `decode = { from, until }` pick generated tokens).
    #[arg(long, value_name = "FILE")]
    intervene: Option<std::path::PathBuf>,
    /// Add a llama.cpp control vector (GGUF) at every position, times SCALE (default 1;
    /// repeatable: the files are summed).
    #[arg(long, value_name = "FILE[:SCALE]")]
    control_vector: Vec<String>,
    #[command(flatten)]
    steer: SteerArgs,
    /// Ablate a direction everywhere: project block K's direction of a control vector out of
    /// the embedding and every attention and MLP write (repeatable).
    #[arg(long, value_name = "FILE.gguf:K")]
    ablate: Vec<String>,
    /// Apply Linear-AcT maps (from `steer fit-act`) at strength λ in [0, 1] (default 1).
    #[arg(long, value_name = "FILE.safetensors[:λ]")]
    transport: Vec<String>,
    /// Record hook points matching PATTERN over the whole generation (TL names, `*` globs),
    /// joined along positions as one forward over the sequence would record them; needs --out.
    #[arg(long, value_name = "PATTERN")]
    cache: Vec<String>,
    /// Where to write the recording: one safetensors file keyed by hook name, plus `tokens`
    /// (the positions run: prompt and generated, the last generated token excluded).
    #[arg(long, value_name = "FILE.safetensors")]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    sae: crate::sae::SaeArgs,
    /// Print JSON: {"generations": [{"prompt", "prompt_tokens", "tokens", "text", "stop"}]}.
    #[arg(long)]
    json: bool,
}

/// Where the prompts come from.
#[derive(clap::Args)]
pub struct PromptArgs {
    /// A prompt (repeatable; the prompts generate as one ragged batch, each exactly as alone).
    #[arg(long)]
    prompt: Vec<String>,
    /// A prompt as token ids, comma-separated (repeatable; no BOS is added).
    #[arg(long, value_name = "ID,ID,…")]
    tokens: Vec<String>,
    /// Prompts from a file: one per line, or JSONL of {"text"} or {"tokens"}.
    #[arg(long, value_name = "FILE")]
    prompts: Option<std::path::PathBuf>,
    /// Prepend the BOS token to text prompts (default: the model's TransformerLens default).
    #[arg(long)]
    prepend_bos: Option<bool>,
}

impl PromptArgs {
    /// Whether exactly one prompt is given.
    fn is_one(&self) -> bool {
        self.prompt.len() + self.tokens.len() == 1 && self.prompts.is_none()
    }

    /// Checks what can be checked before the model loads.
    fn check(&self) -> anyhow::Result<()> {
        if self.prompt.is_empty() && self.tokens.is_empty() && self.prompts.is_none() {
            bail!("give at least one --prompt TEXT, --prompts FILE or --tokens ID,ID,…");
        }
        if self.prompt.is_empty() && self.prepend_bos.is_some() {
            bail!("--prepend-bos applies to --prompt; --tokens are used exactly as given");
        }
        Ok(())
    }

    /// Every prompt: its text as given and its ids.
    pub fn read(&self, s: &Subject) -> anyhow::Result<Vec<(String, Vec<u32>)>> {
        let mut prompts = vec![];
        for text in &self.prompt {
            let ids = s.encode_with(text, self.prepend_bos).context("--prompt")?;
            prompts.push((text.clone(), ids));
        }
        for list in &self.tokens {
            let ids: Vec<u32> = list
                .split(',')
                .map(|t| t.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    anyhow::anyhow!("--tokens {list:?}: expected comma-separated token ids")
                })?;
            prompts.push((format!("{ids:?}"), s.ids(&ids).context("--tokens")?));
        }
        if let Some(path) = &self.prompts {
            for p in s.read_prompts(path)? {
                prompts.push((p.text, p.tokens));
            }
        }
        Ok(prompts)
    }
}

/// How tokens are chosen and when a generation stops.
#[derive(clap::Args)]
pub struct DecodeArgs {
    /// The most tokens to generate after each prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Greedy decoding: the likeliest token each step (the default).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p", "seed"])]
    greedy: bool,
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
    /// Seed of the draws (each prompt draws its own, from this seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Also stop after this token (its text, exactly one token, or id:N; repeatable).
    #[arg(long)]
    stop_token: Vec<String>,
    /// Do not stop at the model's end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Generate for at most N prompts at once (the tokens do not depend on N).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
}

impl DecodeArgs {
    /// The generation settings, checked against the model.
    pub fn spec(&self, s: &Subject) -> anyhow::Result<GenerateSpec> {
        if self.seed.is_some() && self.temperature.is_none() {
            bail!("--seed seeds sampling: give --temperature too (greedy decoding draws nothing)");
        }
        let mut stop_tokens: Vec<u32> = self
            .stop_token
            .iter()
            .map(|t| s.token(t).context("--stop-token"))
            .collect::<anyhow::Result<_>>()?;
        if !self.ignore_eos {
            stop_tokens.extend(s.model.cfg.eos_token_id);
        }
        let spec = GenerateSpec {
            max_new_tokens: self.max_new_tokens,
            sampling: Sampling {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed.unwrap_or(0),
            },
            stop_tokens,
        };
        spec.validate(&s.model.cfg)?;
        Ok(spec)
    }

    /// Prompts generated at once.
    pub fn batch(&self) -> usize {
        self.batch as usize
    }
}

/// Where control vectors act.
#[derive(clap::Args)]
pub struct SteerArgs {
    /// Apply control vectors to blocks A-B only (inclusive; default: 1 to the last).
    #[arg(long, value_name = "A-B")]
    pub(crate) layer_range: Option<String>,
    /// Apply control vectors to the generated tokens only, not the prompt (CAA's setting).
    #[arg(long)]
    after_prompt: bool,
}

impl SteerArgs {
    /// The block range, parsed.
    fn range(&self) -> anyhow::Result<Option<(usize, usize)>> {
        match &self.layer_range {
            Some(r) => Ok(Some(layer_range(r).context("--layer-range")?)),
            None => Ok(None),
        }
    }

    /// The interventions adding every `FILE[:SCALE]` control vector, times `times`.
    pub fn interventions(
        &self,
        specs: &[(ControlVector, f64)],
        times: f64,
        cfg: &Config,
    ) -> anyhow::Result<Vec<Intervention>> {
        let range = self.range()?;
        if let Some((_, b)) = range {
            if b >= cfg.n_layers {
                bail!(
                    "--layer-range {}: block {b} is past the model's last block {}",
                    self.layer_range.as_deref().unwrap_or_default(),
                    cfg.n_layers - 1
                );
            }
        }
        let mut out = vec![];
        for (cv, scale) in specs {
            out.extend(cv.interventions(scale * times, range, cfg.n_layers, cfg.d_model)?);
        }
        if out.is_empty() && !specs.is_empty() {
            bail!(
                "--layer-range {}: the control vectors have no direction in these blocks",
                self.layer_range.as_deref().unwrap_or("1-last")
            );
        }
        if self.after_prompt {
            for iv in &mut out {
                iv.select.positions = Some(Positions::Generated);
            }
        }
        Ok(out)
    }
}

/// Warns when `file` was made for another family than `cfg`'s: it fits (its shapes were
/// checked), so it is applied, but it was fitted on other activations.
fn warn_model_hint(file: &str, hint: &str, cfg: &Config) {
    if !hint.is_empty() && hint != cfg.family.name() {
        tracing::warn!(
            "{file} was made for a {hint} model; this one is {} (its width and blocks fit, so it is applied)",
            cfg.family.name()
        );
    }
}

/// `FILE:NUMBER` split at its last colon, or the whole of `spec` and `default`.
fn file_and_number(spec: &str, default: f64) -> (&str, f64) {
    match spec.rsplit_once(':') {
        Some((f, x)) => match x.parse::<f64>() {
            Ok(x) => (f, x),
            Err(_) => (spec, default),
        },
        None => (spec, default),
    }
}

/// Reads each `FILE[:SCALE]` (scale 1 when absent), warning when a file's model hint is not
/// the model's family.
pub fn read_control_vectors(
    specs: &[String],
    flag: &str,
    cfg: &Config,
) -> anyhow::Result<Vec<(ControlVector, f64)>> {
    let mut out = vec![];
    for spec in specs {
        let (file, scale) = file_and_number(spec, 1.0);
        if !scale.is_finite() {
            bail!("{flag} {spec}: the scale must be finite");
        }
        let cv = ControlVector::read(std::path::Path::new(file))?;
        // Checked now (width, blocks), not when the first generation reaches it.
        cv.interventions(1.0, None, cfg.n_layers, cfg.d_model)?;
        warn_model_hint(file, &cv.model_hint, cfg);
        out.push((cv, scale));
    }
    Ok(out)
}

/// The interventions of `--ablate FILE.gguf:K`: block K's direction projected out everywhere.
fn ablation(spec: &str, cfg: &Config) -> anyhow::Result<Vec<Intervention>> {
    let Some((file, k)) = spec
        .rsplit_once(':')
        .and_then(|(f, k)| Some((f, k.parse::<usize>().ok()?)))
    else {
        bail!("--ablate {spec}: expected FILE.gguf:K (the block whose direction to ablate)");
    };
    let cv = ControlVector::read(std::path::Path::new(file))?;
    let Some(direction) = cv.directions.get(&k) else {
        let have: Vec<String> = cv.directions.keys().map(|k| k.to_string()).collect();
        bail!(
            "--ablate {spec}: {file} has no direction.{k} (it has blocks {})",
            have.join(", ")
        );
    };
    patchclamp_lab::steering::directional_ablation(cfg, direction)
        .with_context(|| format!("--ablate {spec}"))
}

pub fn main(a: Args) -> anyhow::Result<()> {
    a.prompts.check()?;
    if a.stop.iter().any(|s| s.is_empty()) {
        bail!("--stop '' would stop before the first token; give a non-empty string");
    }
    let mut interventions = match &a.intervene {
        Some(path) => crate::run::read_interventions(path)?,
        None => vec![],
    };
    if a.cache.is_empty() != a.out.is_none() {
        bail!("--cache and --out go together: --cache PATTERN --out FILE.safetensors");
    }
    if a.out.is_some() && !a.prompts.is_one() {
        bail!("--cache records one generation: give exactly one --prompt or --tokens");
    }
    if (a.steer.layer_range.is_some() || a.steer.after_prompt) && a.control_vector.is_empty() {
        bail!("--layer-range and --after-prompt apply to --control-vector");
    }
    a.steer.range()?;
    let s = Subject::load(&a.model, false, &crate::device())?;
    let target = match &a.out {
        Some(out) => Some(patchclamp_report::outcomes::CacheTarget::check(
            out, &s.home,
        )?),
        None => None,
    };
    let splices = a.sae.splices(&s.model.cfg)?;
    let mut record = vec![];
    let all = patchclamp_core::Hooks::none()
        .splice_all(splices.iter().cloned())
        .points(&s.model.cfg);
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
    let vectors = read_control_vectors(&a.control_vector, "--control-vector", &s.model.cfg)?;
    interventions.extend(a.steer.interventions(&vectors, 1.0, &s.model.cfg)?);
    for spec in &a.ablate {
        interventions.extend(ablation(spec, &s.model.cfg)?);
    }
    for spec in &a.transport {
        let (file, strength) = file_and_number(spec, 1.0);
        if !(0.0..=1.0).contains(&strength) {
            bail!("--transport {spec}: the strength λ must be in [0, 1] (0 is the identity, 1 the fitted map)");
        }
        let f = patchclamp_report::transport_file::read(std::path::Path::new(file))?;
        warn_model_hint(file, &f.model_hint, &s.model.cfg);
        let iv = f.transport.intervention(f.point, strength);
        // Checked now against the model (its point, width, λ), not at the first step.
        iv.validate(&s.model.cfg, 1, 1, &Default::default())
            .with_context(|| format!("--transport {spec}"))?;
        interventions.push(iv);
    }
    let prompts = a.prompts.read(&s)?;
    let spec = a.decode.spec(&s)?;
    let ids: Vec<Vec<u32>> = prompts.iter().map(|(_, ids)| ids.clone()).collect();
    let mut sofar: Vec<Vec<u32>> = vec![vec![]; ids.len()];
    let done = generate_spliced(
        &s.model,
        &ids,
        a.decode.batch(),
        &spec,
        &interventions,
        &record,
        &splices,
        |i, t| {
            // Decoding the text so far is only needed to look for stop strings.
            if a.stop.is_empty() {
                return true;
            }
            sofar[i].push(t);
            let so_far = s.text_of(&sofar[i]);
            !a.stop.iter().any(|stop| so_far.contains(stop))
        },
    )?;
    let mut generations = vec![];
    for ((prompt, ids), (g, recorded)) in prompts.iter().zip(done) {
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
            prompt: prompt.clone(),
            prompt_tokens: ids.clone(),
            text: s.text_of(&g.tokens),
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
