//! SAE training checkpoints: parameters, Adam moments, counters and the run's identity in one
//! safetensors file, written atomically; a resume continues bit for bit.

use std::collections::BTreeMap;
use std::path::Path;

use patchclamp_core::fsutil::{content_hash, write_atomic};

use crate::sae::train::Trainer;
use crate::train::Moments;
use crate::{Error, Result};

const FORMAT: &str = "patchclamp-sae-checkpoint-1";

/// Writes `tr` to `path`; `identity` names what the run trains on (model, hook, corpus), so a
/// resume from another run is refused.
pub fn save(tr: &Trainer, identity: &str, path: &Path) -> Result<()> {
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    let p = &tr.params;
    let params: [(&str, &[f32]); 5] = [
        ("W_enc_t", &p.w_enc_t),
        ("b_enc", &p.b_enc),
        ("W_dec", &p.w_dec),
        ("b_dec", &p.b_dec),
        ("threshold", &p.threshold),
    ];
    let live: Vec<(&str, &[f32])> = params.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    for ((name, v), m) in live.iter().zip(tr.moments()) {
        bufs.push((format!("param.{name}"), vec![v.len()], bytes(v)));
        if !m.m.is_empty() {
            bufs.push((format!("m.{name}"), vec![v.len()], bytes(&m.m)));
        }
        if !m.v.is_empty() {
            bufs.push((format!("v.{name}"), vec![v.len()], bytes(&m.v)));
        }
    }
    let json = |x: &Vec<u64>| serde_json::to_string(x).expect("numbers");
    let meta: BTreeMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("identity".into(), identity.to_string()),
        (
            "spec".into(),
            serde_json::to_string(&tr.spec).expect("plain data"),
        ),
        ("step".into(), tr.step.to_string()),
        ("tokens".into(), tr.tokens.to_string()),
        (
            "topk_threshold".into(),
            tr.topk_threshold.to_bits().to_string(),
        ),
        (
            "scale".into(),
            tr.scale.map_or("none".into(), |s| s.to_bits().to_string()),
        ),
        ("since_fired".into(), json(&tr.since_fired)),
        ("fired".into(), json(&tr.fired)),
    ]
    .into();
    let out = crate::train::checkpoint::serialize(&bufs, &meta);
    Ok(write_atomic(path, &out)?)
}

/// The step a checkpoint holds, after checking it belongs to this run.
pub fn check(tr: &Trainer, identity: &str, path: &Path) -> Result<u64> {
    let (meta, _) = read(path)?;
    check_meta(tr, identity, path, &meta)?;
    meta["step"].parse().map_err(|_| bad(path, "bad step"))
}

/// Restores `tr` from `path` (written by this run: same spec and identity).
pub fn load(tr: &mut Trainer, identity: &str, path: &Path) -> Result<()> {
    let (meta, tensors) = read(path)?;
    check_meta(tr, identity, path, &meta)?;
    let get = |name: &str, n: usize| -> Result<Vec<f32>> {
        let v = tensors
            .get(name)
            .ok_or_else(|| bad(path, &format!("no tensor '{name}'")))?;
        if v.len() != n {
            return Err(bad(
                path,
                &format!("'{name}' holds {} values, expected {n}", v.len()),
            ));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(bad(path, &format!("'{name}' holds NaN or infinite values")));
        }
        Ok(v.clone())
    };
    let names = tr.param_names();
    let mut moments = vec![];
    for &name in &names {
        let n = match name {
            "W_enc_t" => tr.params.w_enc_t.len(),
            "b_enc" => tr.params.b_enc.len(),
            "W_dec" => tr.params.w_dec.len(),
            "b_dec" => tr.params.b_dec.len(),
            _ => tr.params.threshold.len(),
        };
        let v = get(&format!("param.{name}"), n)?;
        match name {
            "W_enc_t" => tr.params.w_enc_t = v,
            "b_enc" => tr.params.b_enc = v,
            "W_dec" => tr.params.w_dec = v,
            "b_dec" => tr.params.b_dec = v,
            _ => tr.params.threshold = v,
        }
        let opt = |k: &str| -> Result<Vec<f32>> {
            match tensors.contains_key(&format!("{k}.{name}")) {
                true => get(&format!("{k}.{name}"), n),
                false => Ok(vec![]),
            }
        };
        moments.push(Moments {
            m: opt("m")?,
            v: opt("v")?,
        });
    }
    tr.set_moments(moments)?;
    let num = |k: &str| -> Result<u64> {
        meta[k]
            .parse()
            .map_err(|_| bad(path, &format!("bad '{k}'")))
    };
    tr.step = num("step")?;
    tr.tokens = num("tokens")?;
    tr.topk_threshold = f64::from_bits(num("topk_threshold")?);
    tr.scale = match meta["scale"].as_str() {
        "none" => None,
        s => Some(f64::from_bits(
            s.parse().map_err(|_| bad(path, "bad 'scale'"))?,
        )),
    };
    let counts = |k: &str| -> Result<Vec<u64>> {
        let v: Vec<u64> =
            serde_json::from_str(&meta[k]).map_err(|_| bad(path, &format!("bad '{k}'")))?;
        if v.len() != tr.spec.d_sae {
            return Err(bad(
                path,
                &format!("'{k}' has {} latents, expected {}", v.len(), tr.spec.d_sae),
            ));
        }
        Ok(v)
    };
    tr.since_fired = counts("since_fired")?;
    tr.fired = counts("fired")?;
    Ok(())
}

fn bad(path: &Path, msg: &str) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

type Read = (BTreeMap<String, String>, BTreeMap<String, Vec<f32>>);

fn read(path: &Path) -> Result<Read> {
    if !path.is_file() {
        return Err(Error::Input(format!(
            "{} is not a checkpoint file",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(path, &e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(path, &e.to_string()))?;
    let meta: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for k in [
        "format",
        "identity",
        "spec",
        "step",
        "tokens",
        "topk_threshold",
        "scale",
        "since_fired",
        "fired",
        "checksum",
    ] {
        if !meta.contains_key(k) {
            return Err(Error::Input(format!(
                "{} is not a patchclamp SAE checkpoint (no '{k}')",
                path.display()
            )));
        }
    }
    if meta["format"] != FORMAT {
        return Err(bad(
            path,
            &format!("format '{}', expected '{FORMAT}'", meta["format"]),
        ));
    }
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut data = vec![];
    let mut tensors = BTreeMap::new();
    for n in names {
        let view = st.tensor(&n).map_err(|e| bad(path, &e.to_string()))?;
        data.extend_from_slice(view.data());
        let v: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.insert(n, v);
    }
    if content_hash(&data) != meta["checksum"] {
        return Err(bad(
            path,
            "its tensor bytes do not match their checksum (corrupt or edited)",
        ));
    }
    Ok((meta, tensors))
}

fn check_meta(
    tr: &Trainer,
    identity: &str,
    path: &Path,
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    if meta["identity"] != identity {
        return Err(Error::Input(format!(
            "{} was written by another run ({}); resume with the same model, hook and corpus, or start over without --resume",
            path.display(),
            meta["identity"]
        )));
    }
    let ours = serde_json::to_string(&tr.spec).expect("plain data");
    if meta["spec"] != ours {
        return Err(Error::Input(format!(
            "{} was written with other training settings ({}); resume with the settings that wrote it",
            path.display(),
            meta["spec"]
        )));
    }
    Ok(())
}
