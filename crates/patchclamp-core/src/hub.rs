//! Finding a model on disk: a local folder, or a repo id in the Hugging Face cache layout
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub` → `models--ORG--NAME/snapshots/REV/`).
//! Nothing is ever downloaded.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The files of one model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The folder holding them.
    pub dir: PathBuf,
    pub config: PathBuf,
    /// One file, or the shards an index lists.
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, if present.
    pub tokenizer: Option<PathBuf>,
}

/// Locates `spec`: an existing folder, or a repo id (`ORG/NAME`, optionally `@REV`) in the cache.
pub fn locate(spec: &str) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return files_in(path);
    }
    if path.exists() {
        return Err(Error::NotFound {
            what: "model folder",
            path: path.into(),
            hint: " (this is a file; pass the folder that holds config.json)".into(),
        });
    }
    let looks_like_repo =
        !spec.starts_with('.') && !spec.starts_with('/') && spec.split('/').count() <= 2;
    if !looks_like_repo {
        return Err(Error::NotFound {
            what: "model folder",
            path: path.into(),
            hint: String::new(),
        });
    }
    let (repo, rev) = match spec.split_once('@') {
        Some((r, v)) => (r, Some(v)),
        None => (spec, None),
    };
    let mut looked = Vec::new();
    for root in cache_roots() {
        let entry = root.join(format!("models--{}", repo.replace('/', "--")));
        looked.push(entry.display().to_string());
        if let Some(dir) = snapshot(&entry, rev)? {
            return files_in(&dir);
        }
    }
    looked.push(format!("./{spec} (as a local folder)"));
    Err(Error::ModelNotCached {
        repo: repo.to_string(),
        looked: looked.join(", "),
    })
}

/// Cache folders in the order Hugging Face's own libraries consult them.
pub fn cache_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        roots.push(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        roots.push(PathBuf::from(p).join("hub"));
    }
    if let Ok(p) = std::env::var("XDG_CACHE_HOME") {
        roots.push(PathBuf::from(p).join("huggingface").join("hub"));
    }
    if let Ok(home) = std::env::var("HOME") {
        roots.push(
            PathBuf::from(home)
                .join(".cache")
                .join("huggingface")
                .join("hub"),
        );
    }
    roots.dedup();
    roots
}

/// The snapshot folder for `rev` (a branch in `refs/` or a commit), `main` by default,
/// or the only snapshot when there are no refs.
fn snapshot(entry: &Path, rev: Option<&str>) -> Result<Option<PathBuf>> {
    if !entry.is_dir() {
        return Ok(None);
    }
    let rev = rev.unwrap_or("main");
    let refs = entry.join("refs").join(rev);
    let commit = if refs.is_file() {
        std::fs::read_to_string(&refs)
            .map_err(|e| Error::io(&refs, e))?
            .trim()
            .to_string()
    } else {
        rev.to_string()
    };
    let snaps = entry.join("snapshots");
    let dir = snaps.join(&commit);
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    let all: Vec<PathBuf> = match std::fs::read_dir(&snaps) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => Vec::new(),
    };
    Ok(if all.len() == 1 {
        all.into_iter().next()
    } else {
        None
    })
}

/// The model files inside `dir`.
pub fn files_in(dir: &Path) -> Result<ModelFiles> {
    let config = dir.join("config.json");
    if config.exists() && !config.is_file() {
        return Err(Error::config(
            &config,
            "is not a regular file (a folder, device or pipe); config.json must be a JSON file",
        ));
    }
    if !config.is_file() {
        return Err(Error::NotFound {
            what: "config.json",
            path: config,
            hint: " (a Hugging Face model folder holds config.json, model.safetensors and tokenizer.json)".into(),
        });
    }
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let weights = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shards(&index)?
    } else {
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (only pytorch_model.bin is present: convert it to safetensors; pickle files are not loaded)"
        } else {
            " (nor model.safetensors.index.json)"
        };
        return Err(Error::NotFound {
            what: "weights file",
            path: single,
            hint: hint.into(),
        });
    };
    let tok = dir.join("tokenizer.json");
    Ok(ModelFiles {
        dir: dir.into(),
        config,
        weights,
        tokenizer: tok.is_file().then_some(tok),
    })
}

/// The shard files a `model.safetensors.index.json` names, each once, in order.
fn shards(index: &Path) -> Result<Vec<PathBuf>> {
    let text = crate::fsutil::read_text(index, crate::fsutil::SPEC_LIMIT, "index files")?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::config(index, "missing object 'weight_map'"))?;
    let mut files = vec![];
    for (tensor, file) in map {
        // A shard is a file beside the index: a path could read outside the model's folder.
        match file.as_str() {
            Some(f) if !f.is_empty() && !f.contains(['/', '\\']) && f != ".." && f != "." => {
                files.push(f.to_string())
            }
            _ => {
                return Err(Error::config(
                    index,
                    format!("weight_map entry '{tensor}' should name a shard file beside the index, found {file}"),
                ))
            }
        }
    }
    if files.is_empty() {
        return Err(Error::config(index, "'weight_map' names no shard files"));
    }
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}
