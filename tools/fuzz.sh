#!/usr/bin/env bash
# Fuzzes the parsers with cargo fuzz (libFuzzer): safetensors weights, config.json,
# interventions, experiment files, prompt files and training checkpoints, each through the
# path a user's file takes (patchclamp_report::fuzzing).
#
#   tools/fuzz.sh                 # every target, 600 s each
#   tools/fuzz.sh 60 prompts      # one target, 60 s
#
# cargo fuzz needs nightly compiler flags; this machine has one stable toolchain, so the build
# sets RUSTC_BOOTSTRAP=1 and skips the sanitizer (-s none: Rust code is memory-safe; the
# fuzzer looks for panics, aborts, hangs and runaway allocations). A crash input is copied to
# tests/fixtures/fuzz/TARGET/, where `cargo test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(safetensors config_json interventions experiment prompts lab_checkpoint)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build -s none -O)

# Seeds: the repository's own files of each kind, plus what tests/fixtures/fuzz keeps.
seed() {
    local t=$1
    shift
    mkdir -p "fuzz/corpus/$t"
    for f in "$@"; do
        [ -f "$f" ] && cp "$f" "fuzz/corpus/$t/$(echo "$f" | tr '/' '_')"
    done
    return 0
}
seed safetensors tests/fixtures/models/*/model*.safetensors
seed config_json tests/fixtures/models/*/config.json
seed interventions experiments/*.toml
seed experiment experiments/*.toml
seed prompts tests/fixtures/fuzz/prompts/*
seed lab_checkpoint tests/fixtures/fuzz/lab_checkpoint/*

status=0
for t in "${targets[@]}"; do
    echo "== $t: $secs s"
    rm -rf "fuzz/artifacts/$t"
    if ! (cd fuzz && cargo fuzz run -s none -O "$t" "corpus/$t" "../tests/fixtures/fuzz/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1); then
        status=1
        for a in fuzz/artifacts/"$t"/*; do
            [ -f "$a" ] && cp "$a" "tests/fixtures/fuzz/$t/" && echo "kept $a as a regression input"
        done
    fi
done
exit $status
