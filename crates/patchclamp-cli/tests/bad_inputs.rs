//! The bad-input table: a few hundred (command, input, expectation) rows, by class. A bad
//! input gets one line on stderr and exit 1 (2 for usage), and a failed command leaves its
//! output folder exactly as it was; a row that should work exits 0 with a stated property.
//! New classes of bad input get new rows here.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, fixture, tmp};

/// What a row guards against (the classes of issue 14, and the usage errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// `--resume` continues only its own run.
    Resume,
    /// Everything is validated before a file is written.
    ValidateFirst,
    /// A spec that could never act is refused (or warned about).
    NeverActs,
    /// Arguments whose result could only be 0, 0/0, NaN or blank are refused.
    Degenerate,
    /// Loaders question what they read.
    Loader,
    /// No panic, hang or runaway allocation.
    NoPanic,
    /// Output folders and files that are not ours are left alone.
    Files,
    /// Bad flags exit 2.
    Usage,
}

/// How a row's command should end.
enum Expect {
    /// Exit 1 with this in its one-line error.
    Error(&'static str),
    /// Exit 2 (clap's usage error) with this in its message.
    Usage(&'static str),
    /// Exit 0, and the property holds (it gets the output and the row's folder).
    Ok(&'static str, fn(&Output, &Path) -> Result<(), String>),
}

/// Prepares a row's folder before the command runs (given the folder and the table's folder).
type Setup = fn(&Path, &Path);

struct Row {
    class: Class,
    line: String,
    expect: Expect,
    setup: Option<Setup>,
}

/// The rows, added by class.
#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn err(&mut self, class: Class, line: impl Into<String>, expect: &'static str) {
        self.0.push(Row {
            class,
            line: line.into(),
            expect: Expect::Error(expect),
            setup: None,
        });
    }

    fn err_in(
        &mut self,
        class: Class,
        setup: Setup,
        line: impl Into<String>,
        expect: &'static str,
    ) {
        self.0.push(Row {
            class,
            line: line.into(),
            expect: Expect::Error(expect),
            setup: Some(setup),
        });
    }

    fn usage(&mut self, line: impl Into<String>, expect: &'static str) {
        self.0.push(Row {
            class: Class::Usage,
            line: line.into(),
            expect: Expect::Usage(expect),
            setup: None,
        });
    }

    fn ok(
        &mut self,
        class: Class,
        setup: Option<Setup>,
        line: impl Into<String>,
        what: &'static str,
        check: fn(&Output, &Path) -> Result<(), String>,
    ) {
        self.0.push(Row {
            class,
            line: line.into(),
            expect: Expect::Ok(what, check),
            setup,
        });
    }
}

// --- the table's files --------------------------------------------------------------------

/// Config edits, by the family's own field names: (what, edit, expected error).
type ConfigEdit = (&'static str, &'static str, &'static str);

/// The fields a config edit names, per family: layers, width, heads, context, vocab, eps, MLP.
fn fields(family: &str) -> [&'static str; 7] {
    match family {
        "gpt2" => [
            "n_layer",
            "n_embd",
            "n_head",
            "n_positions",
            "vocab_size",
            "layer_norm_epsilon",
            "n_inner",
        ],
        _ => [
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "max_position_embeddings",
            "vocab_size",
            "rms_norm_eps",
            "intermediate_size",
        ],
    }
}

/// Config edits every family gets: `{L}` … `{M}` name the fields of [`fields`].
const CONFIG_EDITS: &[ConfigEdit] = &[
    ("layers-huge", r#"{"{L}": 1000000000}"#, "config declares"),
    ("layers-fewer", r#"{"{L}": 1}"#, "does not use"),
    (
        "layers-more",
        r#"{"{L}": 3}"#,
        "is missing from the checkpoint",
    ),
    ("layers-many", r#"{"{L}": 1000}"#, "config declares"),
    ("layers-zero", r#"{"{L}": 0}"#, "n_layers must be positive"),
    (
        "layers-negative",
        r#"{"{L}": -2}"#,
        "a non-negative integer",
    ),
    (
        "layers-fraction",
        r#"{"{L}": 2.5}"#,
        "a non-negative integer",
    ),
    ("layers-string", r#"{"{L}": "2"}"#, "a non-negative integer"),
    ("width-zero", r#"{"{D}": 0}"#, "must be positive"),
    (
        "width-huge",
        r#"{"{D}": 1000000000000000000}"#,
        "parameters",
    ),
    (
        "heads-zero",
        r#"{"{H}": 0}"#,
        "must be positive|must be a multiple of n_head (0)",
    ),
    ("context-zero", r#"{"{C}": 0}"#, "n_ctx must be positive"),
    ("vocab-zero", r#"{"{V}": 0}"#, "d_vocab must be positive"),
    ("vocab-huge", r#"{"{V}": 100000000000}"#, "config declares"),
    ("eps-zero", r#"{"{E}": 0}"#, "should be a positive number"),
    (
        "eps-negative",
        r#"{"{E}": -1e-5}"#,
        "should be a positive number",
    ),
    ("eps-string", r#"{"{E}": "small"}"#, "should be a number"),
    ("mlp-zero", r#"{"{M}": 0}"#, "d_mlp must be positive"),
    (
        "family-unknown",
        r#"{"model_type": "bert"}"#,
        "unknown model family 'bert'",
    ),
    (
        "family-none",
        r#"{"model_type": null, "architectures": null}"#,
        "cannot tell the model family",
    ),
];

/// Edits for the rotary families (llama, mistral, qwen2).
const ROTARY_EDITS: &[ConfigEdit] = &[
    (
        "theta-zero",
        r#"{"rope_parameters": {"rope_theta": 0, "rope_type": "default"}}"#,
        "rope_theta' should be a positive number",
    ),
    (
        "theta-negative",
        r#"{"rope_parameters": {"rope_theta": -10000, "rope_type": "default"}}"#,
        "rope_theta' should be a positive number",
    ),
    (
        "theta-string",
        r#"{"rope_parameters": {"rope_theta": "big", "rope_type": "default"}}"#,
        "should be a number",
    ),
    (
        "scaling-unknown",
        r#"{"rope_parameters": {"rope_theta": 10000, "rope_type": "yarn2"}}"#,
        "unsupported rope scaling type 'yarn2'",
    ),
    (
        "scaling-factor-zero",
        r#"{"rope_parameters": {"rope_theta": 10000, "rope_type": "linear", "factor": 0}}"#,
        "needs a positive number 'factor'",
    ),
    (
        "kv-heads-not-dividing",
        r#"{"num_key_value_heads": 3}"#,
        "must be a multiple of n_kv_heads",
    ),
];

/// Makes `dst` a folder of links to every file of `src` but `except`.
fn linked_copy(src: &Path, dst: &Path, except: &str) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let f = p.file_name().unwrap();
        if f != except {
            std::os::unix::fs::symlink(&p, dst.join(f)).unwrap();
        }
    }
}

/// Writes `{dir}/models/FAMILY-EDIT`: the fixture with its config.json merged with `edit`
/// (weights and tokenizer linked, not copied).
fn edited_model(dir: &Path, family: &str, name: &str, edit: &str) -> PathBuf {
    let src = PathBuf::from(fixture(family));
    let dst = dir.join("models").join(format!("{family}-{name}"));
    linked_copy(&src, &dst, "config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let f = fields(family);
    let edit = ["{L}", "{D}", "{H}", "{C}", "{V}", "{E}", "{M}"]
        .iter()
        .zip(f)
        .fold(edit.to_string(), |e, (k, v)| e.replace(k, v));
    let edit: serde_json::Value = serde_json::from_str(&edit).unwrap();
    for (k, v) in edit.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

/// Writes a model folder whose config.json or weights file is replaced by `bytes` (or, for
/// `None`, by a link to `/dev/zero`).
fn replaced_file(dir: &Path, name: &str, file: &str, bytes: Option<&[u8]>) -> PathBuf {
    let src = PathBuf::from(fixture("gpt2"));
    let dst = dir.join("models").join(format!("gpt2-{name}"));
    linked_copy(&src, &dst, file);
    match bytes {
        Some(b) => std::fs::write(dst.join(file), b).unwrap(),
        None => std::os::unix::fs::symlink("/dev/zero", dst.join(file)).unwrap(),
    }
    dst
}

/// Like [`replaced_file`], for another family's fixture.
fn replaced_file_of(dir: &Path, family: &str, name: &str, file: &str, bytes: &[u8]) {
    let src = PathBuf::from(fixture(family));
    let dst = dir.join("models").join(format!("{family}-{name}"));
    linked_copy(&src, &dst, file);
    std::fs::write(dst.join(file), bytes).unwrap();
}

/// The fixture's weights with the first value of tensor `name` set to `value`.
fn weights_with(name: &str, value: f32) -> Vec<u8> {
    let mut bytes = std::fs::read(Path::new(&fixture("gpt2")).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// A small experiment (`name`, 4 steps, checkpoints every 2) with `extra` appended.
fn experiment_text(name: &str, d_model: usize, extra: &str) -> String {
    format!(
        "name = \"{name}\"\n[task]\nkind = \"repeated\"\nvocab = 16\nseq_len = 16\nmin_len = 2\nmax_len = 6\n\
         [model]\nn_layers = 2\nd_model = {d_model}\nn_heads = 2\n[train]\nsteps = 4\nbatch = 4\n\
         lr = {{ lr = 1e-3 }}\neval_every = 2\neval_batch = 4\ncheckpoint_every = 2\n{extra}"
    )
}

/// Interventions for `run --intervene` on the GPT-2 fixture (4 heads, d_model 32, 2 layers):
/// (file name, TOML body of one `[[interventions]]` table, expected error).
const INTERVENTIONS: &[(&str, &str, &str)] = &[
    ("window-empty", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'zero' }\nwhen = { from = 5, until = 5 }", "holds no step"),
    ("window-reversed", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'zero' }\nwhen = { from = 9, until = 3 }", "holds no step"),
    ("coef-nan", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'add', vector = 1.0, coef = nan }", "must be finite, got NaN"),
    ("coef-inf", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'add', vector = 1.0, coef = inf }", "must be finite, got inf"),
    ("factor-nan", "at = 'blocks.0.hook_mlp_out'\nop = { kind = 'scale', factor = nan }", "must be finite, got NaN"),
    ("factor-inf", "at = 'blocks.0.hook_mlp_out'\nop = { kind = 'scale', factor = -inf }", "must be finite, got -inf"),
    ("value-nan", "at = 'blocks.0.hook_mlp_out'\nop = { kind = 'set', value = nan }", "non-finite number (NaN at index 0)"),
    ("vector-inf", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'add', vector = [0.0, inf] }", "non-finite"),
    ("mean-nan", "at = 'blocks.0.hook_mlp_out'\nop = { kind = 'mean', mean = [nan] }", "non-finite"),
    ("basis-zero", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'project_out', basis = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] }", "all zeros"),
    ("basis-unnormalised", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'project_out', basis = [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] }", "row 0 has norm 2.000000"),
    ("basis-wrong-width", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'project_out', basis = [1.0, 0.0] }", "must be [32] or [k, 32]"),
    ("basis-nan", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'subspace_patch', source = 'x', basis = { shape = [1, 2], data = [nan, 0.0] } }", "must be [32] or [k, 32]"),
    ("strength-high", "at = 'blocks.0.attn.hook_pattern'\nop = { kind = 'prev_token', strength = 2.0 }", "must lie in [0, 1]"),
    ("strength-nan", "at = 'blocks.0.attn.hook_pattern'\nop = { kind = 'induction', strength = nan }", "must lie in [0, 1]"),
    ("pattern-op-elsewhere", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'prev_token' }", "act on attention patterns"),
    ("head-out-of-range", "at = 'blocks.0.attn.hook_z'\nselect = { heads = [4] }\nop = { kind = 'zero' }", "head 4 is out of range"),
    ("unit-out-of-range", "at = 'blocks.0.hook_mlp_out'\nselect = { units = [32] }\nop = { kind = 'zero' }", "unit 32 is out of range"),
    ("heads-on-resid", "at = 'blocks.0.hook_resid_pre'\nselect = { heads = [0] }\nop = { kind = 'zero' }", "has no head dimension"),
    ("position-out-of-range", "at = 'blocks.0.hook_resid_pre'\nselect = { positions = { indices = [40] } }\nop = { kind = 'zero' }", "out of range"),
    ("row-out-of-range", "at = 'blocks.0.hook_resid_pre'\nselect = { rows = [3] }\nop = { kind = 'zero' }", "batch row 3 is out of range"),
    ("layer-out-of-range", "at = 'blocks.2.hook_resid_pre'\nop = { kind = 'zero' }", "out of range"),
    ("hook-unknown", "at = 'blocks.0.hook_resid_pree'\nop = { kind = 'zero' }", "hook_resid_pre"),
    ("op-unknown", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'explode' }", "unknown variant `explode`"),
    ("field-unknown", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'zero' }\nwhenever = 3", "unknown field `whenever`"),
    ("value-shape", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'set', value = [1.0, 2.0, 3.0] }", "does not broadcast"),
    ("tensor-count", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'set', value = { shape = [2, 2], data = [1.0] } }", "does not broadcast"),
    ("source-missing", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'patch', source = 'clean' }", "patch source 'clean' is not registered"),
    ("transport-band", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'transport', scale = 1.0, shift = 0.0, low = 2.0, high = 1.0 }", "band at blocks.0.hook_resid_pre is empty"),
    ("transport-nan", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'transport', scale = 1.0, shift = 0.0, low = 0.0, high = 1.0, strength = nan }", "transport strength at blocks.0.hook_resid_pre must be finite"),
    ("transport-shift-inf", "at = 'blocks.0.hook_resid_pre'\nop = { kind = 'transport', scale = 1.0, shift = inf, low = 0.0, high = 1.0 }", "non-finite"),
];

/// The same kinds of mistake in JSON interventions files.
const JSON_INTERVENTIONS: &[(&str, &str, &str)] = &[
    (
        "window-empty",
        r#"[{"at": "blocks.0.hook_resid_pre", "op": {"kind": "zero"}, "when": {"from": 2, "until": 1}}]"#,
        "holds no step",
    ),
    (
        "head-out-of-range",
        r#"[{"at": "blocks.1.attn.hook_pattern", "select": {"heads": [9]}, "op": {"kind": "zero"}}]"#,
        "head 9 is out of range",
    ),
    (
        "basis-skewed",
        r#"[{"at": "blocks.0.hook_resid_pre", "op": {"kind": "project_out", "basis": {"shape": [2, 32], "data": [1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}}]"#,
        "rows 0 and 1 have dot product 1.000000",
    ),
    (
        "not-a-list",
        r#"{"at": "blocks.0.hook_resid_pre"}"#,
        "expected a sequence",
    ),
    (
        "truncated",
        r#"[{"at": "blocks.0.hook_resid_pre", "op": {"kind": "zero"}"#,
        "EOF",
    ),
    (
        "op-missing",
        r#"[{"at": "blocks.0.hook_resid_pre"}]"#,
        "missing field `op`",
    ),
    (
        "strength-negative",
        r#"[{"at": "blocks.0.attn.hook_pattern", "op": {"kind": "prev_token", "strength": -0.5}}]"#,
        "must lie in [0, 1]",
    ),
    (
        "number-as-string",
        r#"[{"at": "blocks.0.hook_mlp_out", "op": {"kind": "scale", "factor": "2"}}]"#,
        "invalid type",
    ),
];

/// Writes every file the rows name into `dir`.
fn prepare(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
    w("stim.txt", "The cat sat\nThe dog ran\nA cat sat\n");
    w("ctrl.txt", "sat cat The\nran dog The\nsat cat A\n");
    w("empty.txt", "");
    w("garbage.safetensors", "not a safetensors file at all");
    // Linear-AcT maps fitted on a gpt2 model (32 units at block 0's output).
    let units = |x: f64| vec![x; 32];
    patchclamp_report::transport_file::write(
        &dir.join("map-gpt2.safetensors"),
        "blocks.0.hook_resid_post".parse().unwrap(),
        "gpt2",
        &patchclamp_lab::steering::Transport {
            scale: units(1.5),
            shift: units(0.1),
            low: units(-10.0),
            high: units(10.0),
        },
    )
    .unwrap();
    w("pos.txt", "The cat sat the\nA dog the\n");
    w("neg3.txt", "The cat sat a\nA dog a\nThe mat a\n");
    w("pairs.jsonl", "{\"positive\": \"The cat sat the\", \"negative\": \"The cat sat a\"}\n{\"positive\": \"A dog the\", \"negative\": \"A dog a\"}\n");
    w(
        "pairs-same.jsonl",
        "{\"positive\": \"The cat\", \"negative\": \"The cat\"}\n",
    );
    w(
        "pairs-one.jsonl",
        "{\"positive\": \"The cat the\", \"negative\": \"The cat a\"}\n",
    );
    w("junk.gguf", "GGUF not really");
    w("README.md.gguf", "a user's file");
    w("README.md", "a user's file\n");
    w("blank.txt", "\n\n  \n");
    w("labels.jsonl", "{\"text\": \"The cat\", \"label\": \"a\"}\n{\"text\": \"The dog\", \"label\": \"b\"}\n{\"text\": \"A cat\", \"label\": \"a\"}\n{\"text\": \"A dog\", \"label\": \"b\"}\n");
    w(
        "both.jsonl",
        "{\"text\": \"The cat\", \"tokens\": [1, 2]}\n",
    );
    w("neither.jsonl", "{\"label\": \"a\"}\n");
    w("oov.jsonl", "{\"tokens\": [1, 2, 99999]}\n");
    w("typo.jsonl", "{\"txt\": \"The cat\"}\n");
    w("broken.jsonl", "{\"text\": \"The cat\"\n");
    w(
        "long.jsonl",
        &format!("{{\"tokens\": [{}]}}\n", vec!["1"; 80].join(", ")),
    );
    w(
        "latent-empty-set.jsonl",
        "{\"text\": \"The cat\", \"sets\": {\"en\": []}}\n",
    );
    w(
        "latent-no-sets.jsonl",
        "{\"text\": \"The cat\", \"sets\": {}}\n",
    );
    w("latent-mismatch.jsonl", "{\"text\": \"The cat\", \"sets\": {\"en\": [\" the\"]}}\n{\"text\": \"The dog\", \"sets\": {\"fr\": [\" a\"]}}\n");
    std::fs::write(dir.join("binary.txt"), [0x66, 0xff, 0xfe, 0x0a]).unwrap();
    std::fs::create_dir_all(dir.join("a-folder")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.txt")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.toml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.safetensors")).unwrap();

    // Models whose config.json or weights are wrong.
    for family in ["gpt2", "llama", "mistral", "qwen2"] {
        for (name, edit, _) in CONFIG_EDITS {
            edited_model(dir, family, name, edit);
        }
        if family != "gpt2" {
            for (name, edit, _) in ROTARY_EDITS {
                edited_model(dir, family, name, edit);
            }
        }
    }
    edited_model(dir, "mistral", "window-zero", r#"{"sliding_window": 0}"#);
    edited_model(
        dir,
        "qwen2",
        "window-layers",
        r#"{"use_sliding_window": true}"#,
    );
    replaced_file(
        dir,
        "config-broken",
        "config.json",
        Some(b"{\"n_layer\": 2,"),
    );
    replaced_file(dir, "config-empty", "config.json", Some(b""));
    replaced_file(dir, "config-list", "config.json", Some(b"[1, 2]"));
    replaced_file(dir, "config-zero", "config.json", None);
    replaced_file(dir, "weights-empty", "model.safetensors", Some(b""));
    replaced_file(
        dir,
        "weights-garbage",
        "model.safetensors",
        Some(b"definitely not safetensors"),
    );
    let real = std::fs::read(Path::new(&fixture("gpt2")).join("model.safetensors")).unwrap();
    replaced_file(
        dir,
        "weights-truncated",
        "model.safetensors",
        Some(&real[..real.len() / 2]),
    );
    let mut huge = real.clone();
    huge[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    replaced_file(dir, "weights-header-huge", "model.safetensors", Some(&huge));
    replaced_file(
        dir,
        "weights-nan",
        "model.safetensors",
        Some(&weights_with(
            "transformer.h.0.attn.c_attn.weight",
            f32::NAN,
        )),
    );
    replaced_file(
        dir,
        "weights-inf",
        "model.safetensors",
        Some(&weights_with("transformer.wte.weight", f32::INFINITY)),
    );
    replaced_file(
        dir,
        "tokenizer-broken",
        "tokenizer.json",
        Some(b"{\"model\": 3}"),
    );

    // Sharded weights whose index is wrong (the llama fixture is sharded).
    let index = |name: &str, map: &str| {
        let src = PathBuf::from(fixture("llama"));
        let dst = dir.join("models").join(format!("llama-{name}"));
        linked_copy(&src, &dst, "model.safetensors.index.json");
        std::fs::write(
            dst.join("model.safetensors.index.json"),
            format!("{{\"metadata\": {{}}, \"weight_map\": {map}}}"),
        )
        .unwrap();
    };
    index("index-empty", "{}");
    index(
        "index-escape",
        r#"{"model.embed_tokens.weight": "../gpt2/model.safetensors"}"#,
    );
    index("index-number", r#"{"model.embed_tokens.weight": 3}"#);
    index(
        "index-missing-shard",
        r#"{"model.embed_tokens.weight": "model-00009-of-00009.safetensors"}"#,
    );
    index(
        "index-partial",
        r#"{"model.embed_tokens.weight": "model-00001-of-00004.safetensors"}"#,
    );
    replaced_file_of(
        dir,
        "llama",
        "index-broken",
        "model.safetensors.index.json",
        b"{\"weight_map\": ",
    );

    // Interventions files.
    for (name, body, _) in INTERVENTIONS {
        w(
            &format!("iv-{name}.toml"),
            &format!("[[interventions]]\n{body}\n"),
        );
    }
    for (name, body, _) in JSON_INTERVENTIONS {
        w(&format!("iv-{name}.json"), body);
    }
    w("iv-later.toml", "[[interventions]]\nat = 'blocks.0.hook_resid_pre'\nop = { kind = 'zero' }\nwhen = { from = 10 }\n");
    w("iv-empty.toml", "");
    w(
        "iv-fine.toml",
        "[[interventions]]\nat = 'blocks.0.hook_mlp_out'\nop = { kind = 'scale', factor = 0.5 }\n",
    );

    // Experiments.
    w("small.toml", &experiment_text("small", 16, ""));
    w("wide.toml", &experiment_text("small", 32, ""));
    for (file, name) in [
        ("escape.toml", "../../escaped"),
        ("slash.toml", "a/b"),
        ("dot.toml", ".hidden"),
        ("nameless.toml", ""),
        ("spaces.toml", "my run"),
    ] {
        w(file, &experiment_text(name, 16, ""));
    }
    let clamp = |when: &str| {
        format!("[[interventions]]\nat = \"blocks.0.attn.hook_pattern\"\nselect = {{ heads = [0] }}\nop = {{ kind = \"prev_token\" }}\nwhen = {when}\n")
    };
    w(
        "window-empty.toml",
        &experiment_text("w", 16, &clamp("{ from = 3, until = 3 }")),
    );
    w(
        "window-after.toml",
        &experiment_text("w", 16, &clamp("{ from = 100 }")),
    );
    w("window-nan.toml", &experiment_text("w", 16, "[[interventions]]\nat = \"blocks.0.hook_attn_out\"\nop = { kind = \"scale\", factor = nan }\n"));
    w(
        "huge.toml",
        &experiment_text("h", 16, "").replace("n_layers = 2", "n_layers = 1000000000"),
    );
    w(
        "steps-zero.toml",
        &experiment_text("s", 16, "").replace("steps = 4", "steps = 0"),
    );
    w(
        "batch-zero.toml",
        &experiment_text("s", 16, "").replace("batch = 4", "batch = 0"),
    );
    w(
        "batch-huge.toml",
        &experiment_text("s", 16, "").replace("batch = 4", "batch = 100000000000"),
    );
    w(
        "eval-huge.toml",
        &experiment_text("s", 16, "").replace("eval_batch = 4", "eval_batch = 100000000000"),
    );
    w(
        "lr-nan.toml",
        &experiment_text("s", 16, "").replace("lr = 1e-3", "lr = nan"),
    );
    w(
        "unknown-field.toml",
        &experiment_text("s", 16, "").replace("[train]", "[train]\nwarmup_steps = 3"),
    );
    w(
        "no-source.toml",
        &experiment_text(
            "s",
            16,
            "[[sources]]\nname = \"teacher\"\ncheckpoint = \"nowhere.safetensors\"\n",
        ),
    );
    w(
        "source-zero.toml",
        &experiment_text(
            "s",
            16,
            "[[sources]]\nname = \"teacher\"\ncheckpoint = \"zero.safetensors\"\n",
        ),
    );
    w("clamp-nan.toml", "[[interventions]]\nat = \"blocks.0.hook_attn_out\"\nop = { kind = \"scale\", factor = nan }\n");
    w("clamp-empty.toml", "interventions = []\n");
    w("clamp-head.toml", "[[interventions]]\nat = \"blocks.0.attn.hook_pattern\"\nselect = { heads = [7] }\nop = { kind = \"zero\" }\n");
}

// --- setups -------------------------------------------------------------------------------

/// Runs the binary and insists it works (a setup step).
fn setup_run(args: &[&str]) {
    let o = bin().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "setup {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A folder holding a file patchclamp did not write.
fn foreign_file(out: &Path, _: &Path) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
}

/// A folder holding a complete run of another command (`heads`).
fn heads_run(out: &Path, _: &Path) {
    setup_run(&[
        "heads",
        &fixture("gpt2"),
        "--n",
        "2",
        "--block",
        "4",
        "--out",
        &out.to_string_lossy(),
    ]);
}

/// A finished 4-step run of `small.toml`.
fn trained(out: &Path, dir: &Path) {
    let exp = dir.join("small.toml");
    setup_run(&[
        "train",
        &exp.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]);
}

/// A finished run whose checkpoint was then deleted.
fn trained_no_checkpoint(out: &Path, dir: &Path) {
    trained(out, dir);
    std::fs::remove_file(out.join("checkpoint.safetensors")).unwrap();
}

/// A finished run whose checkpoint has one byte changed.
fn trained_damaged(out: &Path, dir: &Path) {
    trained(out, dir);
    let p = out.join("checkpoint.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let i = b.len() - 5;
    b[i] ^= 0x10;
    std::fs::write(&p, b).unwrap();
}

/// A finished run whose log lost its last two lines.
fn trained_short_log(out: &Path, dir: &Path) {
    trained(out, dir);
    let p = out.join("log.jsonl");
    let text = std::fs::read_to_string(&p).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&p, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
}

/// A folder where a model's weights were copied (as if `--out` pointed at them).
fn model_copy(out: &Path, _: &Path) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::copy(
        Path::new(&fixture("gpt2")).join("model.safetensors"),
        out.join("model.safetensors"),
    )
    .unwrap();
}

/// A folder holding an earlier cache written by `run`.
fn earlier_cache(out: &Path, _: &Path) {
    std::fs::create_dir_all(out).unwrap();
    setup_run(&[
        "run",
        &fixture("gpt2"),
        "--prompt",
        "The cat",
        "--cache",
        "blocks.0.attn.hook_z",
        "--out",
        &out.join("acts.safetensors").to_string_lossy(),
    ]);
}

// --- properties of rows that should work -------------------------------------------------

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn warns_never_acts(o: &Output, _: &Path) -> Result<(), String> {
    let e = stderr(o);
    (e.contains("WARN") && e.contains("never acts"))
        .then_some(())
        .ok_or(format!("no 'never acts' warning in {e:?}"))
}

fn warns_inactive(o: &Output, _: &Path) -> Result<(), String> {
    let e = stderr(o);
    (e.contains("WARN") && e.contains("active at step 0"))
        .then_some(())
        .ok_or(format!("no step-0 warning in {e:?}"))
}

fn warns_model_hint(o: &Output, _: &Path) -> Result<(), String> {
    let e = stderr(o);
    (e.contains("WARN") && e.contains("was made for a gpt2 model; this one is llama"))
        .then_some(())
        .ok_or(format!("no model-hint warning in {e:?}"))
}

fn warns_transport_hint(o: &Output, _: &Path) -> Result<(), String> {
    let e = stderr(o);
    (e.contains("WARN") && e.contains("map-gpt2.safetensors was made for a gpt2 model"))
        .then_some(())
        .ok_or(format!("no model-hint warning in {e:?}"))
}

fn warns_context(o: &Output, _: &Path) -> Result<(), String> {
    let e = stderr(o);
    (e.contains("WARN") && e.contains("context of 64 positions is full"))
        .then_some(())
        .ok_or(format!("no context warning in {e:?}"))
}

fn has_checkpoint(_: &Output, out: &Path) -> Result<(), String> {
    out.join("checkpoint.safetensors")
        .is_file()
        .then_some(())
        .ok_or("no checkpoint".into())
}

fn log_has_four_steps(_: &Output, out: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(out.join("log.jsonl")).map_err(|e| e.to_string())?;
    let steps = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"step\""))
        .count();
    (steps == 4)
        .then_some(())
        .ok_or(format!("{steps} step records"))
}

fn manifest_complete(_: &Output, out: &Path) -> Result<(), String> {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    (m["complete"] == true)
        .then_some(())
        .ok_or(format!("manifest {m}"))
}

fn quiet_stderr(o: &Output, _: &Path) -> Result<(), String> {
    let e = stderr(o);
    e.trim()
        .is_empty()
        .then_some(())
        .ok_or(format!("stderr: {e:?}"))
}

fn predicts(o: &Output, _: &Path) -> Result<(), String> {
    let s = String::from_utf8_lossy(&o.stdout);
    s.contains("next-token predictions")
        .then_some(())
        .ok_or(format!("stdout: {s:?}"))
}

fn cache_replaced(_: &Output, out: &Path) -> Result<(), String> {
    let p = out.join("acts.safetensors");
    let b = std::fs::read(&p).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).map_err(|e| e.to_string())?;
    h.get("blocks.1.attn.hook_z")
        .map(|_| ())
        .ok_or("the new cache did not replace the old one".into())
}

fn result_json(_: &Output, out: &Path) -> Result<(), String> {
    out.join("result.json")
        .is_file()
        .then_some(())
        .ok_or("no result.json".into())
}

// --- the table ----------------------------------------------------------------------------

fn table(dir: &Path) -> Table {
    use Class::*;
    let mut t = Table::default();
    let g = "{gpt2}";
    let d = dir.to_string_lossy().into_owned();
    let patch = |extra: &str| {
        format!("patch {g} --clean 'The cat sat the' --corrupted 'The cat sat a' --answer ' the' --wrong ' a' --out {{out}} {extra}")
    };
    let attribute = |extra: &str| {
        format!("attribute {g} --clean 'The cat sat the' --corrupted 'The cat sat a' --answer ' the' --wrong ' a' --out {{out}} {extra}")
    };
    let trace = |extra: &str| {
        format!("trace {g} --prompt 'The cat sat the' --subject ' cat' --answer ' the' --out {{out}} {extra}")
    };
    let loc = |extra: &str| {
        format!("localize {g} --stimuli {d}/stim.txt --control {d}/ctrl.txt --out {{out}} {extra}")
    };

    // 1. Resume identity.
    let small = format!("{d}/small.toml");
    t.err_in(
        Resume,
        trained,
        format!("train {small} --resume --seed 7 --out {{out}}"),
        "train.seed: 0 in the checkpoint, 7 here",
    );
    t.err_in(
        Resume,
        trained,
        format!("train {small} --resume --steps 9 --out {{out}}"),
        "train.steps: 4 in the checkpoint, 9 here",
    );
    t.err_in(
        Resume,
        trained,
        format!("train {d}/wide.toml --resume --out {{out}}"),
        "model.d_model: 16 in the checkpoint, 32 here",
    );
    t.err_in(
        Resume,
        trained,
        format!("train {d}/window-after.toml --resume --out {{out}}"),
        "different experiment",
    );
    t.err_in(
        Resume,
        trained_no_checkpoint,
        format!("train {small} --resume --out {{out}}"),
        "no checkpoint to resume",
    );
    t.err_in(
        Resume,
        trained_damaged,
        format!("train {small} --resume --out {{out}}"),
        "checksum",
    );
    t.err_in(
        Resume,
        trained_short_log,
        format!("train {small} --resume --out {{out}}"),
        "gap in the log",
    );
    t.err(
        Resume,
        format!("train {small} --resume --out {{out}}"),
        "holds no patchclamp run to resume",
    );
    t.err_in(
        Resume,
        heads_run,
        format!("train {small} --resume --out {{out}}"),
        "no checkpoint to resume",
    );
    t.ok(
        Resume,
        Some(trained),
        format!("train {small} --resume --out {{out}}"),
        "a finished run resumes to the same log",
        log_has_four_steps,
    );
    t.ok(
        Resume,
        None,
        format!("train {small} --resume-or-start --out {{out}}"),
        "asked to start fresh, it does",
        has_checkpoint,
    );
    t.ok(
        Resume,
        Some(trained_no_checkpoint),
        format!("train {small} --resume-or-start --out {{out}}"),
        "no checkpoint: starts over",
        log_has_four_steps,
    );
    t.ok(
        Resume,
        Some(trained),
        format!("train {small} --seed 7 --out {{out}}"),
        "a fresh run replaces the old one",
        manifest_complete,
    );

    // 2. Validate before touching anything.
    t.err_in(
        ValidateFirst,
        trained,
        format!("train {small} --steps 0 --out {{out}}"),
        "must be positive",
    );
    t.err_in(
        ValidateFirst,
        trained,
        format!("train {d}/window-empty.toml --out {{out}}"),
        "holds no step",
    );
    t.err_in(
        ValidateFirst,
        trained,
        format!("train {d}/huge.toml --out {{out}}"),
        "more than this machine's",
    );
    t.err_in(
        ValidateFirst,
        trained,
        format!("train {d}/no-source.toml --out {{out}}"),
        "nowhere.safetensors",
    );
    t.err_in(
        ValidateFirst,
        trained,
        format!("train {d}/lr-nan.toml --out {{out}}"),
        "lr",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/escape.toml"),
        "must be a plain folder name",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/slash.toml"),
        "must be a plain folder name",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/dot.toml"),
        "not starting with '.'",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/spaces.toml"),
        "must be a plain folder name",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/nameless.toml"),
        "'name' must not be empty",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/steps-zero.toml --out {{out}}"),
        "must be positive",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/batch-zero.toml --out {{out}}"),
        "batch",
    );
    t.err_in(
        ValidateFirst,
        trained,
        format!("train {d}/batch-huge.toml --out {{out}}"),
        "GiB of activations per step",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/eval-huge.toml --out {{out}}"),
        "lower batch or eval_batch",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/unknown-field.toml --out {{out}}"),
        "unknown field `warmup_steps`",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/source-zero.toml --out {{out}}"),
        "is not a file",
    );
    t.err(
        ValidateFirst,
        format!("train {d}/missing.toml --out {{out}}"),
        "missing.toml",
    );
    t.err(
        ValidateFirst,
        "lab induction --clamp {dir}/clamp-nan.toml --steps 2 --out {out}",
        "must be finite",
    );
    t.err(
        ValidateFirst,
        "lab induction --clamp {dir}/clamp-head.toml --steps 2 --out {out}",
        "head 7 is out of range",
    );
    t.err(
        ValidateFirst,
        "lab induction --clamp {dir}/missing.toml --out {out}",
        "missing.toml",
    );
    t.err(
        ValidateFirst,
        "lab singh-ih --clamp {dir}/clamp-nan.toml --steps 2 --out {out}",
        "must be finite",
    );
    t.err_in(
        ValidateFirst,
        trained,
        "lab induction --steps 0 --out {out}",
        "must be positive",
    );
    t.err_in(
        ValidateFirst,
        trained,
        "lab toy-phase --steps 0 --out {out}",
        "at least one gradient step",
    );
    t.err_in(
        ValidateFirst,
        model_copy,
        format!("run {g} --prompt 'The cat' --cache '*' --out {{out}}/model.safetensors"),
        "is not an activation cache patchclamp wrote",
    );
    t.err(
        ValidateFirst,
        format!("run {g} --prompt 'The cat' --cache '*' --out {g}/cache.safetensors"),
        "inside the model's folder",
    );
    t.err(
        ValidateFirst,
        format!("run {g} --prompt 'The cat' --cache '*' --out {g}/model.safetensors"),
        "inside the model's folder",
    );
    t.err(
        ValidateFirst,
        format!("run {g} --prompt 'The cat' --cache '*' --out {g}/sub/x.safetensors"),
        "inside the model's folder",
    );
    t.err(
        ValidateFirst,
        format!("run {g} --prompt 'The cat' --cache '*' --out {d}/a-folder"),
        "is a folder",
    );
    t.err(
        ValidateFirst,
        format!(
            "run {g} --prompt 'The cat' --cache blocks.9.attn.hook_z --out {{out}}/x.safetensors"
        ),
        "out of range",
    );
    t.ok(ValidateFirst, Some(earlier_cache), format!("run {g} --prompt 'The cat' --cache 'blocks.*.attn.hook_z' --out {{out}}/acts.safetensors"), "its own earlier cache is replaced", cache_replaced);

    // 3. Specs that can never act.
    for (name, _, expect) in INTERVENTIONS {
        t.err(
            NeverActs,
            format!("run {g} --prompt 'The cat' --intervene {d}/iv-{name}.toml"),
            expect,
        );
    }
    for (name, _, expect) in JSON_INTERVENTIONS {
        t.err(
            NeverActs,
            format!("run {g} --prompt 'The cat' --intervene {d}/iv-{name}.json"),
            expect,
        );
    }
    t.err(
        NeverActs,
        format!("run {g} --prompt 'The cat' --intervene {d}/iv-empty.toml"),
        "missing field `interventions`",
    );
    t.ok(
        NeverActs,
        None,
        format!("run {g} --prompt 'The cat' --intervene {d}/iv-later.toml"),
        "warns that nothing acts at step 0",
        warns_inactive,
    );
    t.ok(
        NeverActs,
        None,
        format!("train {d}/window-after.toml --out {{out}}"),
        "warns that the clamp never acts",
        warns_never_acts,
    );
    t.ok(
        NeverActs,
        None,
        format!("run {g} --prompt 'The cat' --intervene {d}/iv-fine.toml"),
        "a good file applies quietly",
        quiet_stderr,
    );
    t.err(
        NeverActs,
        format!("train {d}/window-nan.toml --out {{out}}"),
        "must be finite, got NaN",
    );

    // 4. Degenerate arguments.
    t.err(
        Degenerate,
        patch("--window 0"),
        "layer window 0 must lie in 1..=2",
    );
    t.err(
        Degenerate,
        patch("--window 3"),
        "layer window 3 must lie in 1..=2",
    );
    t.err(Degenerate, patch("--batch 0"), "batch must be at least 1");
    t.err(
        Degenerate,
        patch("--metric prob"),
        "--wrong applies to --metric logit-diff",
    );
    t.err(
        Degenerate,
        attribute("--window 2"),
        "--window and --batch apply to `patch`",
    );
    t.err(
        Degenerate,
        attribute("--batch 4"),
        "--window and --batch apply to `patch`",
    );
    t.err(
        Degenerate,
        format!(
            "patch {g} --clean 'The cat' --corrupted 'The cat' --answer . --wrong , --out {{out}}"
        ),
        "are the same tokens",
    );
    t.err(Degenerate, format!("patch {g} --clean 'The cat' --corrupted 'The cat sat' --answer . --wrong , --out {{out}}"), "tokens");
    t.err(Degenerate, format!("patch {g} --clean 'The cat sat the' --corrupted 'The cat sat a' --answer . --wrong . --out {{out}}"), "both id");
    t.err(Degenerate, format!("attribute {g} --clean 'The cat' --corrupted 'The cat' --answer . --wrong , --out {{out}}"), "are the same tokens");
    t.err(Degenerate, format!("attribute {g} --clean 'The cat sat the' --corrupted 'The cat sat a' --answer id:5 --wrong id:5 --out {{out}}"), "both id");
    t.err(
        Degenerate,
        trace("--window 0"),
        "layer window 0 must lie in 1..=2",
    );
    t.err(
        Degenerate,
        trace("--kind mlp --window 5"),
        "layer window 5 must lie in 1..=2",
    );
    t.err(
        Degenerate,
        trace("--samples 0"),
        "samples and batch must be at least 1",
    );
    t.err(
        Degenerate,
        trace("--batch 0"),
        "samples and batch must be at least 1",
    );
    t.err(
        Degenerate,
        trace("--noise nan"),
        "must be a finite number ≥ 0, got NaN",
    );
    t.err(
        Degenerate,
        trace("--noise inf"),
        "must be a finite number ≥ 0, got inf",
    );
    t.err(
        Degenerate,
        trace("--noise=-1"),
        "must be a finite number ≥ 0",
    );
    t.err(Degenerate, trace("--noise 0"), "--noise 0 corrupts nothing");
    t.err(
        Degenerate,
        format!(
            "trace {g} --prompt 'The cat sat' --subject-positions 9 --answer ' the' --out {{out}}"
        ),
        "subject position 9 is out of range",
    );
    t.err(
        Degenerate,
        format!(
            "trace {g} --prompt 'The cat sat' --subject ' horse' --answer ' the' --out {{out}}"
        ),
        "does not occur in the prompt",
    );
    t.err(
        Degenerate,
        format!("dla {g} --prompt 'The cat' --answer . --wrong . --out {{out}}"),
        "logit difference is 0 everywhere",
    );
    t.err(
        Degenerate,
        format!("dla {g} --prompt 'The cat' --answer id:7 --wrong id:7 --out {{out}}"),
        "logit difference is 0 everywhere",
    );
    t.err(
        Degenerate,
        format!(
            "hydra {g} --prompt 'The cat' --source 'The dog' --answer . --wrong . --out {{out}}"
        ),
        "0 everywhere",
    );
    t.err(Degenerate, format!("probe {g} --prompts {d}/labels.jsonl --point blocks.0.hook_resid_post --tcav-concept a --tcav-random a --tcav-class . --out {{out}}"), "three different labels");
    t.err(Degenerate, format!("probe {g} --prompts {d}/labels.jsonl --point blocks.0.hook_resid_post --tcav-concept a --tcav-random b --tcav-inputs a --tcav-class . --out {{out}}"), "three different labels");
    t.err(Degenerate, format!("probe {g} --prompts {d}/labels.jsonl --point blocks.0.hook_resid_post --tcav-concept a --tcav-random c --tcav-class . --out {{out}}"), "the random set");
    t.err(
        Degenerate,
        format!("probe {g} --prompts {d}/labels.jsonl --test-fraction 0 --out {{out}}"),
        "held-out split",
    );
    t.err(
        Degenerate,
        format!("probe {g} --prompts {d}/labels.jsonl --test-fraction 1 --out {{out}}"),
        "held-out split",
    );
    t.err(
        Degenerate,
        format!("probe {g} --prompts {d}/labels.jsonl --test-fraction nan --out {{out}}"),
        "held-out split",
    );
    t.err(
        Degenerate,
        format!("probe {g} --prompts {d}/stim.txt --out {{out}}"),
        "label",
    );
    for f in ["0", "-0.5", "1.5", "nan", "inf"] {
        t.err(
            Degenerate,
            loc(&format!("--fraction={f}")),
            "fraction of units must be in (0, 1]",
        );
    }
    t.err(
        Degenerate,
        loc(&format!("--eval {d}/stim.txt --random-draws 0")),
        "at least one random draw",
    );
    t.err(Degenerate, loc("--units heads"), "units");
    t.err(
        Degenerate,
        format!("localize {g} --stimuli {d}/stim.txt --control {d}/stim.txt --out {{out}}"),
        "same",
    );
    for r in ["0", "-1", "1.5", "nan"] {
        t.err(
            Degenerate,
            format!("neurons {g} --prompt 'The cat' --lape-top-rate={r} --out {{out}}"),
            "top rate must be in (0, 1]",
        );
    }
    t.err(
        Degenerate,
        format!("neurons {g} --prompt 'The cat' --batch 0 --out {{out}}"),
        "batch of at least one",
    );
    t.err(
        Degenerate,
        format!("neurons {g} --prompt 'The cat' --top 0 --out {{out}}"),
        "top",
    );
    for r in ["0", "-2", "nan", "inf"] {
        t.err(
            Degenerate,
            format!("extremes {g} --prompt 'The cat' --ratio={r} --out {{out}}"),
            "ratio must be a positive number",
        );
    }
    for a in ["-1", "nan", "inf"] {
        t.err(
            Degenerate,
            format!("extremes {g} --prompt 'The cat' --abs-min={a} --out {{out}}"),
            "abs_min must be a positive number",
        );
    }
    t.err(
        Degenerate,
        format!("heads {g} --block 0 --out {{out}}"),
        "block",
    );
    t.err(
        Degenerate,
        format!("heads {g} --n 0 --out {{out}}"),
        "needs n ≥ 1",
    );
    t.err(
        Degenerate,
        format!("heads {g} --repeats 1 --out {{out}}"),
        "repeated ≥ 2 times",
    );
    t.err(
        Degenerate,
        format!("heads {g} --block 100 --out {{out}}"),
        "context",
    );
    t.err(
        Degenerate,
        format!("lens {g} --prompt 'The cat' --top-k 0 --out {{out}}"),
        "top-k",
    );
    t.err(
        Degenerate,
        format!("run {g} --prompt 'The cat' --top-k 0"),
        "--top-k must be at least 1",
    );
    t.err(
        Degenerate,
        format!("run {g} --prompt 'The cat' --positions 1"),
        "add --cache PATTERN",
    );
    t.err(
        Degenerate,
        format!("run {g} --prompt 'The cat' --out {{out}}/x.safetensors"),
        "add --cache PATTERN",
    );
    t.err(
        Degenerate,
        format!("run {g} --tokens 1,2 --prepend-bos true"),
        "--prepend-bos applies to --prompt",
    );
    t.err(
        Degenerate,
        format!("run {g} --prompt x --cache blocks.0.hook_z"),
        "--cache needs --out",
    );
    t.err(
        Degenerate,
        "lab toy-phase --steps 0 --out {out}",
        "at least one gradient step",
    );
    t.err(
        Degenerate,
        "lab critical-periods --steps 10 --out {out}",
        "--steps does not apply",
    );
    t.err(
        Degenerate,
        "lab toy-phase --clamp {dir}/clamp-nan.toml --out {out}",
        "--clamp applies to induction and singh-ih",
    );
    t.err(
        Degenerate,
        "lab steering --clamp {dir}/clamp-nan.toml --out {out}",
        "steers it afterwards",
    );
    t.err(
        Degenerate,
        "lab induction --clamp {dir}/clamp-empty.toml --steps 2 --out {out}",
        "the clamp holds no interventions",
    );
    t.err(Degenerate, "lab nonsense", "unknown experiment 'nonsense'");

    t.err(
        Degenerate,
        format!("hydra {g} --prompt 'The cat' --source 'The cat' --answer . --out {{out}}"),
        "resampling from it ablates nothing",
    );
    t.err(Degenerate, format!("hydra {g} --prompt 'The cat' --prompt 'The dog' --source 'The cow' --answer . --out {{out}}"), "one source prompt per clean prompt");
    t.err(
        Degenerate,
        format!("lens {g} --latent {d}/latent-empty-set.jsonl --out {{out}}"),
        "token set 'en' is empty",
    );
    t.err(
        Degenerate,
        format!("lens {g} --latent {d}/latent-no-sets.jsonl --out {{out}}"),
        "at least one token set",
    );
    // Generation settings that cannot sample.
    let gen = |extra: &str| format!("generate {g} --prompt 'The cat' {extra}");
    for (extra, want) in [
        ("--max-new-tokens 0", "max_new_tokens must be at least 1"),
        ("--temperature 0", "for the argmax, use greedy decoding"),
        ("--temperature nan", "must be a positive number, got NaN"),
        ("--temperature=-1", "must be a positive number"),
        ("--temperature inf", "must be a positive number, got inf"),
        ("--temperature 1 --top-k 0", "top_k must be at least 1"),
        ("--temperature 1 --top-p 0", "top_p must be in (0, 1]"),
        ("--temperature 1 --top-p 1.5", "top_p must be in (0, 1]"),
        ("--temperature 1 --top-p nan", "top_p must be in (0, 1]"),
        ("--top-k 5", "give a temperature too"),
        ("--top-p 0.9", "give a temperature too"),
        (
            "--repetition-penalty 0",
            "repetition penalty must be a positive number",
        ),
        (
            "--repetition-penalty nan",
            "repetition penalty must be a positive number",
        ),
        (
            "--frequency-penalty inf",
            "frequency penalty must be finite",
        ),
        ("--stop ''", "would stop before the first token"),
        ("--stop-token 'Mary and John'", "exactly one"),
        ("--stop-token id:99999", "outside the vocabulary"),
    ] {
        t.err(Degenerate, gen(extra), want);
    }
    t.err(
        Degenerate,
        format!("generate {g}"),
        "give at least one --prompt",
    );
    t.err(
        Degenerate,
        format!("generate {g} --tokens 1,2 --prepend-bos true"),
        "--prepend-bos applies to --prompt",
    );
    t.err(
        Files,
        format!("heads {g} --n 2 --block 4 --out {g}/heads"),
        "inside the model's folder",
    );
    t.err(
        Files,
        format!("dla {g} --prompt 'The cat' --answer . --out {g}"),
        "inside the model's folder",
    );
    t.err(Files, format!("patch {g} --clean 'The cat sat the' --corrupted 'The cat sat a' --answer . --wrong , --out {g}/../gpt2/p"), "inside the model's folder");
    t.err(
        NeverActs,
        format!("generate {g} --prompt 'The cat' --intervene {d}/iv-coef-nan.toml"),
        "must be finite, got NaN",
    );
    t.err(
        NeverActs,
        format!("generate {g} --prompt 'The cat' --intervene {d}/iv-head-out-of-range.toml"),
        "head 4 is out of range",
    );
    t.err(
        NeverActs,
        format!("generate {g} --prompt 'The cat' --intervene {d}/iv-strength-high.toml"),
        "must lie in [0, 1]|not supported during generation",
    );
    t.err(
        Degenerate,
        format!("generate {g} --tokens 1,x"),
        "expected comma-separated token ids",
    );
    t.err(
        Degenerate,
        format!("generate {g} --tokens 1,99999"),
        "outside the vocabulary",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt '{{long}}'"),
        "context is 64",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt ''"),
        "the prompt is empty",
    );
    t.ok(
        NoPanic,
        None,
        format!("generate {g} --prompt 'The cat' --max-new-tokens 1000"),
        "a generation that fills the context stops there with a warning",
        warns_context,
    );
    // Steering vectors and control vectors.
    let cv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/control-vectors/gpt2-fixture.gguf"
    );
    let extract = |extra: &str| {
        format!("steer extract {g} --pairs {d}/pairs.jsonl --out {{out}}/v.gguf {extra}")
    };
    for (extra, want) in [
        (
            "--layers 1-1 --method median",
            "--method: unknown method 'median'",
        ),
        ("--layers 2-1", "the range is empty"),
        ("--layers x", "expected A-B"),
        ("--layers 0-1", "no slot for block 0"),
        ("--layers 1-5", "is out of range: the model has 2 blocks"),
    ] {
        t.err(Degenerate, extract(extra), want);
    }
    t.err(
        Degenerate,
        format!("steer extract {g} --pairs {d}/pairs-same.jsonl --layers 1-1 --method mean --out {{out}}/v.gguf"),
        "the same tokens",
    );
    t.err(Degenerate, format!("steer extract {g} --pairs {d}/pairs-one.jsonl --layers 1-1 --method pca-diff --out {{out}}/v.gguf"), "at least two pairs");
    t.err(
        NoPanic,
        format!("steer extract {g} --pairs {d}/empty.txt --layers 1-1 --out {{out}}/v.gguf"),
        "holds no pairs",
    );
    t.err(
        NoPanic,
        format!("steer extract {g} --pairs {d}/broken.jsonl --layers 1-1 --out {{out}}/v.gguf"),
        "broken.jsonl:1",
    );
    t.err(
        Files,
        format!("steer extract {g} --pairs {d}/pairs.jsonl --layers 1-1 --out {{out}}/v.bin"),
        "should end in .gguf",
    );
    t.err(
        Files,
        format!("steer extract {g} --pairs {d}/pairs.jsonl --layers 1-1 --out {d}/README.md.gguf"),
        "exists; pass --force",
    );
    t.err(
        Files,
        format!("steer extract {g} --pairs {d}/pairs.jsonl --layers 1-1 --out {g}/v.gguf"),
        "inside the model's folder",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --layer-range 1-1"),
        "apply to --control-vector",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --after-prompt"),
        "apply to --control-vector",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --seed 3"),
        "give --temperature too",
    );
    t.usage(
        format!("generate {g} --prompt 'The cat' --greedy --temperature 1"),
        "cannot be used with",
    );
    t.usage(
        format!("generate {g} --prompt 'The cat' --batch 0"),
        "--batch",
    );
    t.err(
        Loader,
        format!("generate {g} --prompts {d}/missing.txt"),
        "missing.txt",
    );
    t.err(
        NoPanic,
        format!("generate {g} --prompts {d}/empty.txt"),
        "holds no prompts",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --ablate {cv}"),
        "expected FILE.gguf:K",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --ablate {cv}:5"),
        "has no direction.5",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --transport {d}/map.safetensors:1.5"),
        "must be in [0, 1]",
    );
    t.err(
        Loader,
        format!("generate {g} --prompt 'The cat' --transport {d}/garbage.safetensors"),
        "garbage.safetensors",
    );
    t.err(
        Loader,
        format!("generate {g} --prompt 'The cat' --transport {g}/model.safetensors"),
        "not a Linear-AcT map",
    );
    t.err(
        Degenerate,
        format!("steer fit-act {g} --source {d}/pos.txt --target {d}/neg3.txt --point blocks.7.hook_resid_post --out {{out}}/m.safetensors"),
        "blocks.7",
    );
    t.err(
        Files,
        format!("steer fit-act {g} --source {d}/pos.txt --target {d}/neg3.txt --out {{out}}/m.bin"),
        "should end in .safetensors",
    );
    let llama = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/models/llama"
    );
    t.ok(
        Degenerate,
        None,
        format!("generate {llama} --tokens 1,2 --max-new-tokens 2 --transport {d}/map-gpt2.safetensors:0.5"),
        "Linear-AcT maps fitted on another family are applied with a warning",
        warns_transport_hint,
    );
    t.ok(
        Degenerate,
        None,
        format!("generate {llama} --tokens 1,2 --max-new-tokens 2 --control-vector {cv}"),
        "a control vector made for another family is applied with a warning",
        warns_model_hint,
    );
    t.err(
        Degenerate,
        format!("steer extract {g} --positives {d}/pos.txt --negatives {d}/neg3.txt --layers 1-1 --out {{out}}/v.gguf"),
        "pair line by line",
    );
    t.err(
        Degenerate,
        format!("steer extract {g} --pairs {d}/pairs.jsonl --layers 1-1 --position 99 --out {{out}}/v.gguf"),
        "position 99 is out of range",
    );
    t.usage(
        format!("steer extract {g} --positives {d}/pos.txt --layers 1-1 --out {{out}}/v.gguf"),
        "--negatives",
    );
    // Steering sweeps: scales, metrics, vectors and the folder, all before any generation.
    let sweep = |extra: &str| {
        format!("steer sweep {g} --vector {cv} --prompt 'The cat' --max-new-tokens 2 {extra}")
    };
    for (extra, want) in [
        ("--scales 1,1 --out {out}", "given twice"),
        ("--scales nan --out {out}", "not a finite number"),
        (
            "--scales 1,x --out {out}",
            "expected comma-separated numbers",
        ),
        (
            "--scales '' --out {out}",
            "expected comma-separated numbers",
        ),
        ("--contains '' --out {out}", "holds in every text"),
        ("--temperature 0 --out {out}", "use greedy decoding"),
        ("--layer-range 9-9 --out {out}", "--layer-range"),
    ] {
        t.err(Degenerate, sweep(extra), want);
    }
    t.err(
        Loader,
        format!("steer sweep {g} --vector {d}/junk.gguf --prompt 'The cat' --out {{out}}"),
        "junk.gguf",
    );
    t.err(
        Degenerate,
        format!("steer sweep {g} --vector {cv}:inf --prompt 'The cat' --out {{out}}"),
        "must be finite",
    );
    t.err(
        Files,
        sweep(&format!("--out {g}/sweep")),
        "inside the model's folder",
    );
    t.err(Files, sweep(&format!("--out {d}")), "not a patchclamp run");
    t.err(Files, sweep(&format!("--out {d}/empty.txt")), "is a file");
    t.usage(
        format!("steer sweep {g} --prompt 'The cat' --out {{out}}"),
        "--vector",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --cache '*'"),
        "--cache and --out go together",
    );
    t.err(Degenerate, format!("generate {g} --prompt 'The cat' --prompt 'A dog' --cache '*' --out {{out}}/g.safetensors"), "exactly one --prompt");
    t.err(
        ValidateFirst,
        format!("generate {g} --prompt 'The cat' --cache '*' --out {g}/g.safetensors"),
        "inside the model's folder",
    );
    t.err(NoPanic, format!("generate {g} --prompt 'The cat' --cache 'blocks.9.hook_resid_post' --out {{out}}/g.safetensors"), "out of range");
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --control-vector {cv}:nan"),
        "must be finite",
    );
    t.err(
        Loader,
        format!("generate {g} --prompt 'The cat' --control-vector {d}/junk.gguf"),
        "junk.gguf",
    );
    t.err(
        Loader,
        format!("generate {g} --prompt 'The cat' --control-vector {d}/missing.gguf"),
        "missing.gguf",
    );
    t.err(
        Loader,
        format!("generate {g} --prompt 'The cat' --control-vector {g}/model.safetensors"),
        "model.safetensors",
    );
    t.err(
        Degenerate,
        format!("generate {g} --prompt 'The cat' --control-vector {cv} --layer-range 3-2"),
        "the range is empty",
    );

    // Tokens: id:N everywhere a token is asked for, checked against the vocabulary.
    for cmd in [
        format!("dla {g} --prompt 'The cat' --answer id:999999 --out {{out}}"),
        format!("dla {g} --prompt 'The cat' --answer id:1 --wrong id:320 --out {{out}}"),
        format!("hydra {g} --prompt 'The cat' --source 'The dog' --answer id:320 --out {{out}}"),
        format!("trace {g} --prompt 'The cat sat' --subject ' cat' --answer id:5000 --out {{out}}"),
        format!("patch {g} --clean 'The cat' --corrupted 'The dog' --answer id:400 --wrong , --out {{out}}"),
        format!("attribute {g} --clean 'The cat' --corrupted 'The dog' --answer id:400 --wrong , --out {{out}}"),
        format!("attribute {g} --clean 'The cat' --corrupted 'The dog' --answer . --wrong id:321 --out {{out}}"),
        format!("probe {g} --prompts {d}/labels.jsonl --point blocks.0.hook_resid_post --tcav-concept a --tcav-random b --tcav-class id:999 --out {{out}}"),
        format!("run {g} --tokens 1,2,400"),
    ] {
        t.err(Degenerate, cmd, "outside the vocabulary");
    }
    t.err(
        Degenerate,
        format!("dla {g} --prompt 'The cat' --answer id:x --out {{out}}"),
        "expected id:NUMBER",
    );
    t.err(
        Degenerate,
        format!("dla {g} --prompt 'The cat' --answer 'Mary and John' --out {{out}}"),
        "exactly one",
    );
    t.err(
        Degenerate,
        format!("dla {g} --prompt 'The cat' --answer '' --out {{out}}"),
        "exactly one",
    );
    t.ok(
        Degenerate,
        None,
        format!("dla {g} --prompt 'The cat' --answer id:17 --wrong id:18 --out {{out}}"),
        "id:N tokens work",
        result_json,
    );
    t.ok(
        Degenerate,
        None,
        format!("run {g} --tokens 1,2,3"),
        "token ids run",
        predicts,
    );
    t.ok(Degenerate, None, format!("trace {g} --prompt 'The cat sat on the' --subject-positions 1 --answer id:9 --samples 1 --out {{out}}"), "trace takes ids", result_json);

    // 5. Loaders.
    for family in ["gpt2", "llama", "mistral", "qwen2"] {
        for (name, _, expect) in CONFIG_EDITS {
            t.err(
                Loader,
                format!("inspect {d}/models/{family}-{name}"),
                expect,
            );
        }
        if family != "gpt2" {
            for (name, _, expect) in ROTARY_EDITS {
                t.err(
                    Loader,
                    format!("inspect {d}/models/{family}-{name}"),
                    expect,
                );
            }
        }
    }
    t.err(
        Loader,
        format!("inspect {d}/models/mistral-window-zero"),
        "'sliding_window' should be a positive integer",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/qwen2-window-layers"),
        "not supported for qwen2",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-config-broken"),
        "invalid JSON",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-config-empty"),
        "invalid JSON",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-config-list"),
        "cannot tell the model family",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-weights-empty"),
        "not a valid safetensors file",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-weights-garbage"),
        "not a valid safetensors file",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-weights-truncated"),
        "not a valid safetensors file",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-weights-header-huge"),
        "not a valid safetensors file",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-weights-nan"),
        "NaN",
    );
    t.err(
        Loader,
        format!("run {d}/models/gpt2-weights-nan --prompt 'The cat'"),
        "NaN",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/gpt2-weights-inf"),
        "inf",
    );
    t.err(
        Loader,
        format!("run {d}/models/gpt2-tokenizer-broken --prompt 'The cat'"),
        "tokenizer",
    );
    t.err(
        Loader,
        format!("heads {d}/zero.safetensors --out {{out}}"),
        "is not a file",
    );
    t.err(
        Loader,
        format!("heads {g}/model.safetensors --out {{out}}"),
        "not a patchclamp training checkpoint",
    );
    t.err_in(
        Loader,
        trained_damaged,
        "heads {out}/checkpoint.safetensors --out {out}/heads",
        "checksum",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/llama-index-empty"),
        "names no shard files",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/llama-index-escape"),
        "should name a shard file beside the index",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/llama-index-number"),
        "should name a shard file beside the index, found 3",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/llama-index-missing-shard"),
        "model-00009-of-00009.safetensors",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/llama-index-partial"),
        "does not use|is missing",
    );
    t.err(
        Loader,
        format!("inspect {d}/models/llama-index-broken"),
        "invalid JSON",
    );
    t.err(Loader, "inspect /nonexistent/model", "not found");
    t.err(Loader, "inspect not-a-repo/anywhere", "is not on disk");

    // 6. No panics, hangs or runaway reads.
    t.ok(
        NoPanic,
        None,
        format!("run {g} --prompt 'The cat' --top-k 100000"),
        "a huge --top-k shows the whole vocabulary",
        predicts,
    );
    for cmd in [
        format!("extremes {g} --prompts {d}/zero.txt --out {{out}}"),
        format!("neurons {g} --prompts {d}/zero.jsonl --out {{out}}"),
        format!("run {g} --prompt 'The cat' --intervene {d}/zero.toml"),
        format!("train {d}/zero.toml --out {{out}}"),
        format!("lab induction --clamp {d}/zero.toml --out {{out}}"),
    ] {
        t.err(NoPanic, cmd, "larger than");
    }
    t.err(
        NoPanic,
        format!("extremes {d}/models/gpt2-config-zero --prompt a --out {{out}}"),
        "is not a regular file",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/binary.txt --out {{out}}"),
        "not UTF-8",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/a-folder --out {{out}}"),
        "a-folder",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/empty.txt --out {{out}}"),
        "holds no prompts",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/blank.txt --out {{out}}"),
        "holds no prompts",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/missing.txt --out {{out}}"),
        "missing.txt",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/both.jsonl --out {{out}}"),
        "exactly one of",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/neither.jsonl --out {{out}}"),
        "exactly one of",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/oov.jsonl --out {{out}}"),
        "outside the vocabulary",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/typo.jsonl --out {{out}}"),
        "unknown field `txt`",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/broken.jsonl --out {{out}}"),
        "broken.jsonl:1",
    );
    t.err(
        NoPanic,
        format!("extremes {g} --prompts {d}/long.jsonl --out {{out}}"),
        "context is 64",
    );
    t.err(
        NoPanic,
        format!("lens {g} --latent {d}/latent-mismatch.jsonl --out {{out}}"),
        "sets",
    );
    t.err(
        NoPanic,
        format!("run {g} --prompt ''"),
        "the prompt is empty",
    );
    t.err(
        NoPanic,
        format!("run {g} --prompt '{{long}}'"),
        "context is 64",
    );
    t.err(NoPanic, "extremes {gpt2} --out {out}", "no prompts");
    t.err(
        NoPanic,
        "lens /nonexistent --prompt a --out {out}",
        "model folder not found",
    );
    t.err(
        NoPanic,
        format!("dla {g} --prompt 'The cat' --answer id:4294967296 --out {{out}}"),
        "expected id:NUMBER",
    );
    t.err(NoPanic, format!("run {g} --prompt 'The cat' --cache 'blocks.*.hook_nothing' --out {{out}}/x.safetensors"), "hook");
    t.err(
        NoPanic,
        format!("inspect {g}/model.safetensors"),
        "this is a file; pass the folder",
    );

    // 7. Files that are not ours.
    t.err_in(
        Files,
        foreign_file,
        "heads {gpt2} --n 2 --block 4 --out {out}",
        "not a patchclamp run (notes.txt)",
    );
    t.err_in(
        Files,
        foreign_file,
        format!("train {small} --out {{out}}"),
        "not a patchclamp run (notes.txt)",
    );
    t.err_in(
        Files,
        foreign_file,
        "lab toy-phase --steps 2 --out {out}",
        "not a patchclamp run (notes.txt)",
    );
    t.err_in(
        Files,
        heads_run,
        "dla {gpt2} --prompt 'The cat' --answer id:17 --out {out}",
        "holds a complete `heads` run",
    );
    t.err_in(
        Files,
        heads_run,
        format!("train {small} --out {{out}}"),
        "holds a complete `heads` run",
    );
    t.err_in(
        Files,
        trained,
        "heads {gpt2} --n 2 --block 4 --out {out}",
        "holds a complete `train` run",
    );
    t.err(
        Files,
        "heads {gpt2} --n 2 --block 4 --out {dir}/README.md",
        "README.md is a file; --out names a folder",
    );
    t.err(
        Files,
        format!("train {small} --out {d}/README.md"),
        "README.md is a file; --out names a folder",
    );
    t.ok(
        Files,
        Some(foreign_file),
        "heads {gpt2} --n 2 --block 4 --out {out} --force",
        "--force writes beside the foreign file",
        manifest_complete,
    );

    t.err(NoPanic, format!("extremes {g} --task {}/../../experiments/bigram-backcopy.toml --n 1000000000000 --out {{out}}", env!("CARGO_MANIFEST_DIR")), "more than half this machine's memory");
    t.err(
        Degenerate,
        "bench forward --shape tiny --iters 0",
        "must be positive",
    );
    t.err(
        Degenerate,
        "bench forward --shape tiny --seq 100000",
        "the model's context is",
    );
    t.err(
        Degenerate,
        "bench train --steps 0",
        "--steps must be positive",
    );
    t.err(
        Degenerate,
        "bench forward --shape nope",
        "unknown --shape 'nope'",
    );
    t.err(
        Degenerate,
        "bench forward --shape tiny --cache blocks.9.hook_z",
        "--cache blocks.9.hook_z: unknown hook point",
    );

    // Writes that fail say "writing" and name the path, once.
    t.err(
        Files,
        "heads {gpt2} --n 2 --block 4 --out /proc/patchclamp-nowhere",
        "writing /proc/patchclamp-nowhere",
    );
    t.err(
        Files,
        "heads {gpt2} --n 2 --block 4 --out /dev/null/x",
        "writing /dev/null/x: Not a directory",
    );
    t.err(
        Files,
        format!("run {g} --prompt 'The cat' --cache '*' --out /proc/pc/x.safetensors"),
        "writing /proc/pc/x.safetensors",
    );
    t.err(
        Files,
        format!("train {small} --out /proc/pc-train"),
        "writing /proc/pc-train",
    );

    // Usage errors: clap's exit 2.
    t.usage("run", "required");
    t.usage(format!("run {g}"), "--prompt");
    t.usage(
        format!("run {g} --prompt a --tokens 1"),
        "cannot be used with",
    );
    t.usage(format!("run {g} --tokens a,b"), "invalid value");
    t.usage(format!("dla {g} --out x"), "--answer");
    t.usage(
        format!("train {small} --resume --resume-or-start"),
        "cannot be used with",
    );
    t.usage("bench forward --threads 0", "must lie in 1..=");
    t.usage("bench forward --threads 100000", "must lie in 1..=");
    t.usage("bench forward --threads two", "not a whole number");
    t.usage("bench train --threads 0", "must lie in 1..=");
    t.usage("bench patch --threads 65536", "must lie in 1..=");
    t.usage(
        format!("patch {g} --clean a --corrupted b --answer . --window=-1 --out x"),
        "invalid value",
    );
    t.usage(
        format!("trace {g} --prompt a --answer b --samples many --out x"),
        "invalid value",
    );
    t.usage(format!("heads {g} --n=-3 --out x"), "invalid value");
    t.usage("inspect", "required");
    t.usage("frobnicate", "unrecognized subcommand");
    t.usage(
        format!("run {g} --prompt a --no-such-flag"),
        "unexpected argument",
    );
    t
}

// --- running it ---------------------------------------------------------------------------

/// Splits a row's command line at spaces outside single quotes (`''` is an empty argument).
fn split(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut started) = (vec![], String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => (quoted, started) = (!quoted, true),
            ' ' if !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// Whether a message says some run of its `: `-separated parts twice in a row (a cause printed
/// by its error and again by the chain).
fn says_twice(err: &str) -> bool {
    let parts: Vec<&str> = err.trim().split(": ").collect();
    (1..=parts.len() / 2).any(|w| parts.windows(2 * w).any(|p| p[..w] == p[w..]))
}

/// Every file under `root` with its bytes (empty when `root` does not exist).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.insert(p, b);
            }
        }
    }
    out
}

/// Runs `cmd`, killing it after `limit` (a hang is a failure, not a stuck test).
fn run_with_limit(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return child.wait_with_output().map_err(|e| e.to_string());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("still running after {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs one row; `Err` says how it went wrong.
fn check(i: usize, r: &Row, dir: &Path) -> Result<(), String> {
    let out = dir.join("rows").join(format!("row{i}"));
    if let Some(setup) = r.setup {
        setup(&out, dir);
    }
    let before = snapshot(&out);
    let (gpt2, long) = (fixture("gpt2"), "the cat ".repeat(40));
    let args: Vec<String> = split(&r.line)
        .iter()
        .map(|a| {
            a.replace("{gpt2}", &gpt2)
                .replace("{out}", &out.to_string_lossy())
                .replace("{long}", &long)
                .replace("{dir}", &dir.to_string_lossy())
        })
        .collect();
    let mut cmd = bin();
    cmd.args(&args).current_dir(dir.join("cwd"));
    let o = run_with_limit(cmd, Duration::from_secs(120))?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let code = o.status.code();
    match &r.expect {
        Expect::Error(want) => {
            if code != Some(1) {
                return Err(format!("exit {code:?}, not 1; stderr {err:?}"));
            }
            // Warnings about the spec may precede the error; the error itself is one line.
            let lines = err.trim().lines().filter(|l| !l.contains(" WARN ")).count();
            if lines != 1 {
                return Err(format!("not one line: {err:?}"));
            }
            if !want.split('|').any(|w| err.contains(w)) {
                return Err(format!("expected {want:?} in {err:?}"));
            }
            if says_twice(&err) {
                return Err(format!("a cause is repeated in {err:?}"));
            }
            if err.contains("panicked") || err.contains("backtrace") {
                return Err(format!("a panic or backtrace: {err:?}"));
            }
            // A failed command leaves its folder as it was (or absent, as it was).
            if snapshot(&out) != before {
                return Err(format!("the failed command changed {}", out.display()));
            }
            if r.setup.is_none() && out.exists() {
                return Err(format!("the failed command created {}", out.display()));
            }
        }
        Expect::Usage(want) => {
            if code != Some(2) {
                return Err(format!("exit {code:?}, not 2; stderr {err:?}"));
            }
            if !err.contains(want) {
                return Err(format!("expected {want:?} in {err:?}"));
            }
        }
        Expect::Ok(what, property) => {
            if code != Some(0) {
                return Err(format!("exit {code:?}, not 0 ({what}); stderr {err:?}"));
            }
            property(&o, &out).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn every_bad_input_is_refused_clearly_and_changes_nothing() {
    let dir = tmp("bad-inputs");
    prepare(&dir);
    // Commands run in a scratch folder, so a default `runs/NAME` lands there.
    std::fs::create_dir_all(dir.join("cwd")).unwrap();
    let rows = table(&dir).0;
    let failures = std::sync::Mutex::new(vec![]);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(r) = rows.get(i) else { break };
                if let Err(e) = check(i, r, &dir) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("row {i} [{:?}] {:?}: {e}", r.class, r.line));
                }
            });
        }
    });
    let mut counts: BTreeMap<Class, usize> = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.class).or_default() += 1;
    }
    println!("{} rows by class: {counts:?}", rows.len());
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert!(rows.len() >= 250, "the table has {} rows", rows.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_repetition_check_catches_a_cause_said_twice() {
    assert!(says_twice(
        "error: loading /x: model folder not found: /x: model folder not found: /x"
    ));
    assert!(says_twice(
        "error: writing a: File exists (os error 17): File exists (os error 17)"
    ));
    assert!(!says_twice("error: loading /x: model folder not found: /x"));
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // `patchclamp inspect MODEL | head -1`: the reader is gone before the first write (the model
    // loads first), so every write meets a closed pipe.
    let mut child = bin()
        .args(["inspect", &fixture("llama")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "nothing on stderr: {}", stderr(&o));
}
