//! Errors: one line on stderr and exit 1, for a table of bad inputs; usage errors exit 2.

mod common;

use std::path::Path;

use common::{bin, fails, fixture, tmp};

/// Prepares a row's output folder before the command runs.
type Setup = fn(&Path);

/// A folder holding a file patchclamp did not write.
fn foreign_file(out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
}

/// A folder holding a complete run of another command (`heads`).
fn heads_run(out: &Path) {
    let status = bin()
        .args(["heads", &fixture("gpt2"), "--n", "2", "--block", "4"])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
        .status;
    assert!(status.success(), "the setup run failed");
}

/// One bad input: the command line (`{gpt2}` is the fixture, `{out}` a fresh folder, `{dir}`
/// the table's folder with two small prompt files, quotes
/// group words), what is expected in its one-line error, and how its output folder is
/// prepared.
struct Row {
    line: &'static str,
    expect: &'static str,
    setup: Option<Setup>,
}

const fn row(line: &'static str, expect: &'static str) -> Row {
    Row {
        line,
        expect,
        setup: None,
    }
}

/// Whether a message says some run of its `: `-separated parts twice in a row (a cause printed
/// by its error and again by the chain).
fn says_twice(err: &str) -> bool {
    let parts: Vec<&str> = err.trim().split(": ").collect();
    (1..=parts.len() / 2).any(|w| parts.windows(2 * w).any(|p| p[..w] == p[w..]))
}

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

const PATCH: &str = "patch {gpt2} --clean a --corrupted b --answer . --out {out}";

const ROWS: &[Row] = &[
    // --- inputs ---
    row("run {gpt2} --prompt ''", "the prompt is empty"),
    row("run {gpt2} --prompt '{long}'", "context is 64 tokens"),
    row(
        "dla {gpt2} --prompt 'The cat' --answer 'Mary and John' --out {out}",
        "exactly one",
    ),
    row(
        "dla {gpt2} --prompt 'The cat' --answer id:999999 --out {out}",
        "outside the vocabulary",
    ),
    row("extremes {gpt2} --out {out}", "no prompts"),
    row("lens /nonexistent --prompt a --out {out}", "model folder not found"),
    // --- settings ---
    row(
        "run {gpt2} --prompt x --cache blocks.0.hook_z",
        "--cache needs --out",
    ),
    row(
        "run {gpt2} --prompt x --cache blocks.7.hook_resid_pre --out {out}/a.st",
        "layer 7 is out of range",
    ),
    row("heads {gpt2} --block 0 --out {out}", "block"),
    row(
        "neurons {gpt2} --prompt 'The cat' --batch 0 --out {out}",
        "batch of at least one",
    ),
    row(
        "patch {gpt2} --clean a --corrupted b --answer . --wrong , --point nowhere --out {out}",
        "unknown --point 'nowhere'",
    ),
    row(
        "patch {gpt2} --clean a --corrupted b --answer . --metric odds --out {out}",
        "unknown --metric 'odds'",
    ),
    row(PATCH, "--metric logit-diff needs --wrong"),
    row(
        "trace {gpt2} --prompt 'The cat sat' --subject cat --answer ' t' --kind heads --out {out}",
        "unknown --kind 'heads'",
    ),
    row("lab nonsense", "unknown experiment 'nonsense'"),
    // --- degenerate arguments (a result that could only be 0, 0/0 or NaN) ---
    row(
        "patch {gpt2} --clean 'The cat' --corrupted 'The cat' --answer . --wrong , --out {out}",
        "are the same tokens",
    ),
    row(
        "attribute {gpt2} --clean 'The cat sat on the mat' --corrupted 'The cat sat on the cat' --answer . --wrong . --out {out}",
        "both id",
    ),
    row(
        "dla {gpt2} --prompt 'The cat' --answer . --wrong . --out {out}",
        "logit difference is 0 everywhere",
    ),
    row(
        "trace {gpt2} --prompt 'The cat sat' --subject cat --answer ' t' --noise nan --out {out}",
        "must be a finite number ≥ 0, got NaN",
    ),
    row(
        "trace {gpt2} --prompt 'The cat sat' --subject cat --answer ' t' --noise 0 --out {out}",
        "--noise 0 corrupts nothing",
    ),
    row(
        "extremes {gpt2} --prompt 'The cat' --ratio nan --out {out}",
        "ratio must be a positive number",
    ),
    row("lab toy-phase --steps 0 --out {out}", "at least one gradient step"),
    row(
        "localize {gpt2} --stimuli {dir}/stim.txt --control {dir}/ctrl.txt --fraction 0 --out {out}",
        "fraction of units must be in (0, 1], got 0",
    ),
    row(
        "localize {gpt2} --stimuli {dir}/stim.txt --control {dir}/ctrl.txt --fraction nan --out {out}",
        "must be in (0, 1], got NaN",
    ),
    row(
        "localize {gpt2} --stimuli {dir}/stim.txt --control {dir}/ctrl.txt --eval {dir}/stim.txt --random-draws 0 --out {out}",
        "at least one random draw",
    ),
    row(
        "neurons {gpt2} --prompt 'The cat' --lape-top-rate 1.5 --out {out}",
        "top rate must be in (0, 1], got 1.5",
    ),
    row(
        "lab critical-periods --steps 10 --out {out}",
        "--steps does not apply",
    ),
    // --- run folders ---
    Row {
        line: "heads {gpt2} --n 2 --block 4 --out {out}",
        expect: "not a patchclamp run (notes.txt)",
        setup: Some(foreign_file),
    },
    Row {
        line: "dla {gpt2} --prompt 'The cat' --answer id:17 --out {out}",
        expect: "holds a complete `heads` run",
        setup: Some(heads_run),
    },
    row(
        "heads {gpt2} --n 2 --block 4 --out ../../README.md",
        "README.md is a file; --out names a folder",
    ),
    row(
        "train ../../experiments/induction-prev-token.toml --resume --out {out}",
        "holds no patchclamp run to resume",
    ),
];

#[test]
fn bad_inputs_fail_with_one_line_and_exit_1() {
    let dir = tmp("error-table");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stim.txt"),
        "The cat sat\nThe dog ran\nA cat sat\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("ctrl.txt"),
        "sat cat The\nran dog The\nsat cat A\n",
    )
    .unwrap();
    for (i, r) in ROWS.iter().enumerate() {
        let out = dir.join(format!("row{i}"));
        if let Some(setup) = r.setup {
            setup(&out);
        }
        let (gpt2, long) = (fixture("gpt2"), "the cat ".repeat(40));
        let args: Vec<String> = split(r.line)
            .iter()
            .map(|a| {
                a.replace("{gpt2}", &gpt2)
                    .replace("{out}", &out.to_string_lossy())
                    .replace("{long}", &long)
                    .replace("{dir}", &dir.to_string_lossy())
            })
            .collect();
        let err = fails(bin().args(&args).output().unwrap());
        assert!(
            err.contains(r.expect),
            "row {i} {:?}: expected {:?} in {err}",
            r.line,
            r.expect
        );
        assert!(!says_twice(&err), "row {i}: a cause is repeated in {err}");
        if r.setup.is_none() {
            // Everything is validated before the output folder is touched.
            assert!(
                !out.exists(),
                "row {i} {:?} created {}",
                r.line,
                out.display()
            );
        }
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(bin().args(["run"]).output().unwrap().status.code(), Some(2));
    assert_eq!(
        bin()
            .args(["dla", &fixture("gpt2"), "--out", "x"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2),
        "--answer is required"
    );
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
