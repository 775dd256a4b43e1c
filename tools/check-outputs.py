#!/usr/bin/env python3
"""Runs the example commands with two patchclamp binaries and checks that their JSON outputs agree.

A refactor must change no number: every JSON file an example command writes (result.json,
summary.json, ablations.json, ...) and every `--json` stdout must be equal between the binary
before and the binary after, apart from fields that name the revision or the time.

    python tools/check-outputs.py --before /tmp/patchclamp-old --after target/release/patchclamp
    python tools/check-outputs.py --before OLD --after NEW --flagship   # also `lab induction` (~2 min each)
    python tools/check-outputs.py --record OLD --into /tmp/before       # run one binary only, keep its outputs
    python tools/check-outputs.py --after NEW --against /tmp/before     # compare with recorded outputs
    python tools/check-outputs.py --diff /tmp/before /tmp/after         # compare two recorded folders

Exit status: 0 all equal, 1 a difference (each printed with its JSON path), 2 usage or a command failed.
Standard library only (no torch): it runs wherever the binaries run.
"""

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

# Fields that legitimately differ between two runs of the same numbers.
IGNORED = {"git_revision", "revision", "elapsed_s", "seconds", "time", "written_at", "started_at"}

PROMPT = "When Mary and John went to the store, John gave a drink to"
# The fixture's tokenizer is tiny: these answers are single tokens in it.
CLEAN = "The cat sat on the mat"
CORRUPT = "The cat sat on the cat"


def fixture(name):
    return os.path.join(ROOT, "tests", "fixtures", "models", name)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_inputs(work):
    """Labelled prompt files for the census, probe and localizer (the CLI tests' recipe)."""
    labelled, a, b = [], [], []
    for i in range(40):
        lab, base = ("x", 10) if i % 2 == 0 else ("y", 60)
        toks = [base + (i * 7 + k * 3) % 20 for k in range(8)]
        labelled.append(json.dumps({"tokens": toks, "label": lab}))
        (a if i % 2 == 0 else b).append(json.dumps({"tokens": toks}))
    for name, rows in [("l.jsonl", labelled), ("a.jsonl", a), ("b.jsonl", b)]:
        with open(os.path.join(work, name), "w") as f:
            f.write("\n".join(rows) + "\n")


def commands(flagship):
    """(name, arguments, prints JSON on stdout). Outputs go to out/NAME relative to the work folder."""
    g = fixture("gpt2")
    patch = ["--clean", CLEAN, "--corrupted", CORRUPT, "--answer", ".", "--wrong", ","]
    cmds = [
        ("run", ["run", g, "--prompt", "The cat sat on the", "--top-k", "5", "--json"], True),
        ("inspect", ["inspect", fixture("llama"), "--json"], True),
        ("patch-resid", ["patch", g, *patch, "--point", "resid_pre", "--out", "out/patch-resid", "--json"], True),
        ("patch-z", ["patch", g, *patch, "--point", "z", "--noising", "--out", "out/patch-z"], False),
        ("attribute", ["attribute", g, *patch, "--point", "resid_pre", "--out", "out/attribute"], False),
        ("trace", ["trace", g, "--prompt", "The cat sat on the mat", "--subject", "cat", "--answer", " t",
                   "--kind", "mlp", "--window", "2", "--samples", "4", "--out", "out/trace"], False),
        ("lens", ["lens", g, "--prompt", PROMPT, "--track", "id:17", "--out", "out/lens"], False),
        ("dla", ["dla", g, "--prompt", PROMPT, "--prompt", "The cat sat on the", "--target", "id:17",
                 "--baseline", "id:42", "--out", "out/dla"], False),
        ("heads", ["heads", g, "--n", "8", "--block", "6", "--out", "out/heads"], False),
        ("extremes", ["extremes", g, "--prompt", PROMPT, "--prompt", "The cat sat on the mat", "--out", "out/extremes"], False),
        ("hydra", ["hydra", g, "--prompt", CLEAN, "--source", CORRUPT, "--target", "id:17", "--baseline", "id:42",
                   "--out", "out/hydra"], False),
        ("neurons", ["neurons", g, "--prompts", "l.jsonl", "--batch", "7", "--out", "out/neurons"], False),
        ("probe", ["probe", g, "--prompts", "l.jsonl", "--out", "out/probe"], False),
        ("localize", ["localize", g, "--stimuli", "a.jsonl", "--control", "b.jsonl", "--eval", "a.jsonl",
                      "--random-draws", "3", "--out", "out/localize"], False),
        ("toy-phase", ["lab", "toy-phase", "--steps", "300", "--out", "out/toy-phase"], False),
        ("critical-periods", ["lab", "critical-periods", "--out", "out/critical-periods"], False),
        ("train", ["train", os.path.join(ROOT, "experiments", "induction-prev-token.toml"), "--steps", "60",
                   "--out", "out/train", "--json"], True),
    ]
    if flagship:
        cmds.append(("lab-induction", ["lab", "induction", "--out", "out/lab-induction"], False))
    return cmds


def run_all(binary, into, flagship):
    """Runs every command with `binary` in a fresh work folder, then moves its outputs to `into`."""
    work = tempfile.mkdtemp(prefix="patchclamp-check-")
    write_inputs(work)
    os.makedirs(os.path.join(into, "stdout"), exist_ok=True)
    for name, args, prints_json in commands(flagship):
        print(f"  {name}: {' '.join(args[:2])} ...", file=sys.stderr, flush=True)
        p = subprocess.run([binary, *args], cwd=work, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{binary} {name} failed (exit {p.returncode}): {p.stderr.strip()}")
        if prints_json:
            with open(os.path.join(into, "stdout", name + ".json"), "w") as f:
                f.write(p.stdout)
    shutil.move(os.path.join(work, "out"), os.path.join(into, "out"))
    shutil.rmtree(work)


def json_files(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".json") and f != "manifest.json":
                p = os.path.join(d, f)
                out[os.path.relpath(p, root)] = p
    return out


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def same_f32(a, b):
    """One float32 written two ways: widened to f64 exactly ("0.12998458743095398", through a JSON
    value) or in its shortest float32 form ("0.12998459", serialised directly). Equal when both
    name the same float32 and one side is that float32 exactly, so no other rounding passes."""
    try:
        return f32(a) == f32(b) and (f32(a) == a or f32(b) == b)
    except OverflowError:
        return False


def diff(a, b, path, found):
    """Appends to `found` every place where `a` and `b` differ (floats must be equal, NaN = NaN,
    a float32 in either of its two spellings)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in a or k not in b:
                found.append(f"{path}.{k}: only in {'after' if k in b else 'before'}")
            else:
                diff(a[k], b[k], f"{path}.{k}", found)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            found.append(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", found)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif isinstance(a, float) and isinstance(b, float) and same_f32(a, b):
        pass
    elif a != b or type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        found.append(f"{path}: {str(a)[:80]} vs {str(b)[:80]}")


def compare(before, after):
    fa, fb = json_files(before), json_files(after)
    problems = []
    for rel in sorted(set(fa) | set(fb)):
        if rel not in fa or rel not in fb:
            problems.append(f"{rel}: only {'after' if rel in fb else 'before'}")
            continue
        with open(fa[rel]) as x, open(fb[rel]) as y:
            try:
                a, b = json.load(x), json.load(y)
            except json.JSONDecodeError as e:
                problems.append(f"{rel}: not JSON ({e})")
                continue
        found = []
        diff(a, b, rel, found)
        problems.extend(found)
    for p in problems[:200]:
        print(p)
    print(f"{len(fa)} JSON files compared; {len(problems)} differences")
    return not problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="binary before the change")
    ap.add_argument("--after", help="binary after the change")
    ap.add_argument("--record", help="run this binary only and keep its outputs (with --into)")
    ap.add_argument("--into", help="folder for --record's outputs")
    ap.add_argument("--against", help="outputs recorded earlier, instead of --before")
    ap.add_argument("--flagship", action="store_true", help="also run `lab induction` (about 2 minutes)")
    ap.add_argument("--diff", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two recorded folders")
    a = ap.parse_args()
    if a.diff:
        return 0 if compare(*a.diff) else 1
    if a.record:
        if not a.into:
            ap.error("--record needs --into")
        if os.path.exists(a.into):
            ap.error(f"{a.into} exists; give a new folder")
        run_all(os.path.abspath(a.record), a.into, a.flagship)
        print(f"recorded into {a.into}")
        return 0
    if not a.after or not (a.before or a.against):
        ap.error("give --after and one of --before or --against")
    tmp = tempfile.mkdtemp(prefix="patchclamp-compare-")
    before = a.against
    if a.before:
        before = os.path.join(tmp, "before")
        run_all(os.path.abspath(a.before), before, a.flagship)
    after = os.path.join(tmp, "after")
    run_all(os.path.abspath(a.after), after, a.flagship)
    same = compare(before, after)
    shutil.rmtree(tmp)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
