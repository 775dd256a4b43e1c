//! `patchclamp`: the command line on top of patchclamp-core and patchclamp-lab.

mod analysis;
mod bench;
mod generate;
mod inspect;
mod lab;
mod patch;
mod run;
mod sae;
mod steer;
mod trace;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  patchclamp lab induction                       # the flagship experiment (embedded, no files)
  patchclamp train experiments/induction-prev-token.toml --out runs/pt   # train under a clamp
  patchclamp train experiments/induction-prev-token.toml --out runs/pt --resume   # same experiment only
  patchclamp inspect tests/fixtures/models/gpt2  # config, parameters, every hook point
  patchclamp inspect openai-community/gpt2       # a model in the Hugging Face cache
  patchclamp run tests/fixtures/models/llama --prompt 'The cat sat' --top-k 5
  patchclamp run tests/fixtures/models/llama --tokens 1,45,67 --top-k 5   # token ids
  patchclamp generate tests/fixtures/models/gpt2 --prompt 'The cat' --max-new-tokens 16 --json
  patchclamp generate MODEL --prompt 'Once' --temperature 0.8 --top-p 0.9 --seed 1 --stop '.'
  patchclamp steer extract MODEL --pairs pairs.jsonl --method pca-diff --layers 1-1 --out v.gguf
  patchclamp generate MODEL --prompt 'Hello' --control-vector v.gguf:2.0
  patchclamp generate MODEL --prompts prompts.txt --batch 16 --max-new-tokens 64 --json   # one ragged batch
  patchclamp steer sweep MODEL --vector v.gguf --scales=-2,0,2 --prompt 'Hello' --out runs/sweep
  patchclamp lab steering                          # K8: the steering battery on a two-style toy LM
  patchclamp lab sae-toy                           # K11: SAEs on a known superposition (seconds)
  patchclamp sae train MODEL --hook blocks.0.hook_resid_post --corpus corpus.txt --arch topk --k 8 \
      --d-sae 256 --tokens 200000 --out runs/sae
  patchclamp sae eval runs/sae/sae MODEL --corpus corpus.txt --out runs/sae-eval
  patchclamp run MODEL --prompt 'Hello' --sae runs/sae/sae --error-term \
      --cache 'blocks.0.hook_resid_post.hook_sae_*' --out acts.safetensors
  patchclamp run MODEL --prompt 'Hello' --cache 'blocks.*.attn.hook_pattern' --out acts.safetensors
  patchclamp patch MODEL --clean 'When Mary and John went to the store, John gave a drink to' \
      --corrupted 'When Mary and John went to the store, Mary gave a drink to' \
      --answer ' Mary' --wrong ' John' --point resid_pre --out patch-out
  patchclamp bench forward --shape gpt2-small --batch 8 --seq 128 --threads 2
  patchclamp lens MODEL --prompt 'The Eiffel Tower is in the city of' --out runs/lens
  patchclamp dla MODEL --prompt 'When Mary and John went to the store, John gave a drink to' \
      --answer ' Mary' --wrong ' John' --out runs/dla
  patchclamp heads runs/induction/induction-baseline/checkpoint.safetensors --out runs/heads
  patchclamp neurons MODEL --prompts corpus.jsonl --out runs/neurons   # labels → LAPE
  patchclamp extremes MODEL --prompts prompts.txt --out runs/extremes
  patchclamp probe MODEL --prompts labelled.jsonl --out runs/probe
  patchclamp localize MODEL --stimuli sentences.txt --control nonwords.txt --eval text.txt --out runs/loc
  patchclamp hydra MODEL --prompt 'The capital of France is' --source 'The capital of Italy is' \
      --answer ' Paris' --out runs/hydra

Exit status: 0 done, 1 an error (one line on stderr), 2 a usage error (bad flags).
An --out folder is locked while a command writes it and closed by manifest.json (complete: true);
a rerun into it replaces the earlier run's files, and a folder holding other files is refused
unless --force.";

/// Patch-clamp electrophysiology for transformers: record, patch, clamp, and train under clamps.
#[derive(Parser)]
#[command(name = "patchclamp", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Log more (-v: debug, -vv: trace); RUST_LOG works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model's config, parameter count and every hook point with its shape.
    Inspect(inspect::Args),
    /// Run a prompt: next-token predictions, optionally caching activations to safetensors.
    Run(run::Args),
    /// Generate text after prompts (greedy or sampled) with a key-value cache.
    Generate(generate::Args),
    /// Steering: extract vectors from contrastive pairs, sweep a vector's scale, fit Linear-AcT maps.
    #[command(subcommand)]
    Steer(steer::Cmd),
    /// Sparse autoencoders in SAELens's format: train, evaluate, describe (splice with --sae).
    #[command(subcommand)]
    Sae(sae::Cmd),
    /// Activation patching over (layer, position) or (layer, head), with heatmaps.
    Patch(patch::Args),
    /// Attribution patching: the first-order estimate of `patch`, from one backward pass.
    Attribute(patch::Args),
    /// Causal tracing (ROME): noise the subject, restore states, map the indirect effect.
    Trace(trace::Args),
    /// Measure speed and memory (prints numbers; compare with tools/bench/).
    #[command(subcommand)]
    Bench(bench::Cmd),
    /// Experiments on the embedded default (no download): `patchclamp lab` lists them.
    Lab(lab::Args),
    /// Train a model from an experiment file, clamps and all; writes log, checkpoint, report.
    Train(train::Args),
    /// Logit lens over layers and positions; latent-language curves for token sets.
    Lens(analysis::lens::Args),
    /// Direct logit attribution of a logit (difference) to every head and MLP.
    Dla(analysis::dla::Args),
    /// Head detectors: previous-token, induction, duplicate, sink, copying, composition.
    Heads(analysis::heads::Args),
    /// Neuron census over a prompt stream: dead, lazy, detectors, positional, LAPE.
    Neurons(analysis::neurons::Args),
    /// Extreme tokens: attention sinks, value drains, residual peaks, massive activations.
    Extremes(analysis::extremes::Args),
    /// Linear probes on labelled prompts (per layer) and TCAV.
    Probe(analysis::probe::Args),
    /// Localizer: units selective for one stimulus set, and ablating them vs random units.
    Localize(analysis::localize::Args),
    /// Hydra effect: direct vs total effect of ablating each layer, and who compensates.
    Hydra(analysis::hydra::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    patchclamp_core::sys::tune_allocator();
    init_logging(cli.verbose);
    let result = match cli.cmd {
        Cmd::Inspect(a) => inspect::main(a),
        Cmd::Run(a) => run::main(a),
        Cmd::Generate(a) => generate::main(a),
        Cmd::Steer(c) => steer::main(c),
        Cmd::Sae(c) => sae::main(c),
        Cmd::Patch(a) => patch::main(a, patch::Method::Exact),
        Cmd::Attribute(a) => patch::main(a, patch::Method::Attribution),
        Cmd::Trace(a) => trace::main(a),
        Cmd::Bench(c) => bench::main(c),
        Cmd::Lab(a) => lab::main(a),
        Cmd::Train(a) => {
            training_threads();
            train::main(a)
        }
        Cmd::Lens(a) => analysis::lens::main(a),
        Cmd::Dla(a) => analysis::dla::main(a),
        Cmd::Heads(a) => analysis::heads::main(a),
        Cmd::Neurons(a) => analysis::neurons::main(a),
        Cmd::Extremes(a) => analysis::extremes::main(a),
        Cmd::Probe(a) => analysis::probe::main(a),
        Cmd::Localize(a) => analysis::localize::main(a),
        Cmd::Hydra(a) => analysis::hydra::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain, as `error: outer: inner`; a cause its outer
            // message already spells out (errors that print their source) is said once.
            let mut chain: Vec<String> = vec![];
            // Only a cause's first line: a tensor library's error may carry a backtrace below.
            for c in e
                .chain()
                .map(|c| {
                    c.to_string()
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .filter(|c| !c.is_empty())
            {
                if !chain.last().is_some_and(|outer| outer.contains(&c)) {
                    chain.push(c);
                }
            }
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Parses `--threads`: at least 1 and at most the machine's logical CPUs (more only adds
/// switching, and a huge count would exhaust the process's threads).
pub(crate) fn thread_count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n == 0 || n > cpus {
        return Err(format!(
            "must lie in 1..={cpus} (this machine's logical CPUs)"
        ));
    }
    Ok(n)
}

/// The default `--threads`: two, or one on a single-CPU machine.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Sets the number of CPU threads candle's kernels use (must run before the first op).
pub(crate) fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        // SAFETY: called at start-up, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// Training steps of small models are many small element-wise ops: candle's element-wise
/// worker pool spends more time waking than working, while the matrix products still use
/// every thread. Keeps element-wise ops on the calling thread unless the user chose otherwise.
pub(crate) fn training_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called at start-up, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// Loads a model for a command, with processing if asked.
pub(crate) fn load_model(spec: &str, processed: bool) -> anyhow::Result<patchclamp_core::Loaded> {
    use anyhow::Context;
    let mut m =
        patchclamp_core::load(spec, &device()).with_context(|| format!("loading {spec}"))?;
    if processed {
        m.model.process(patchclamp_core::Processing::all())?;
    }
    Ok(m)
}

/// The device every command computes on: the one place it is chosen.
pub(crate) fn device() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// Prints `text` and a newline to stdout; a closed pipe (`| head`) ends the output quietly.
pub(crate) fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
        // The reader went away (EPIPE): nothing more to say, and nothing went wrong.
        std::process::exit(0);
    }
}
