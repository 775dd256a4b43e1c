//! `patchclamp steer extract`: steering vectors from contrastive pairs, written as a llama.cpp
//! control vector (GGUF) and as safetensors.

use std::path::PathBuf;

use anyhow::{bail, Context};
use patchclamp_lab::steering::{extract, Method};
use patchclamp_report::control_vector::ControlVector;
use patchclamp_report::Subject;

/// `steer` subcommands.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Extract one vector per block from contrastive pairs (JSONL {"positive": …, "negative": …}).
    Extract(ExtractArgs),
}

/// Arguments of `steer extract`.
#[derive(clap::Args)]
pub struct ExtractArgs {
    /// A model folder, a cached repo id, or a lab checkpoint (prompts as token ids).
    model: String,
    /// JSONL of {"positive": TEXT, "negative": TEXT} pairs.
    #[arg(long)]
    pairs: PathBuf,
    /// mean (CAA), pca-diff or pca-center (repeng), llama-mean or llama-pca (llama.cpp).
    #[arg(long, default_value = "pca-diff")]
    method: String,
    /// Blocks to extract at, inclusive: A-B (llama.cpp's control vectors start at block 1).
    #[arg(long)]
    layers: String,
    /// The control vector file to write (.gguf); the vectors also go to the same name with .safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn main(c: Cmd) -> anyhow::Result<()> {
    let Cmd::Extract(a) = c;
    let method = match a.method.as_str() {
        "mean" => Method::Mean,
        "pca-diff" => Method::PcaDiff,
        "pca-center" => Method::PcaCenter,
        "llama-mean" => Method::LlamaMean,
        "llama-pca" => Method::LlamaPca,
        m => {
            bail!("unknown --method '{m}'; use mean, pca-diff, pca-center, llama-mean or llama-pca")
        }
    };
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
    let pairs = s.read_pairs(&a.pairs)?;
    let blocks: Vec<usize> = (layers.0..=layers.1).collect();
    let v = extract(&s.model, &pairs, &blocks, method)?;
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
