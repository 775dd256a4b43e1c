#!/usr/bin/env bash
# Every test: the Rust workspace, then the Python package's pytest suite on the same build.
# The suite needs only numpy and pytest (no torch); they go into target/py-venv, with the
# package built in place there by maturin (dev profile, sharing cargo's build).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
venv="$PWD/target/py-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin>=1.9.4,<2' 'numpy>=1.23' 'pytest>=7'
(cd crates/patchclamp-py && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --locked --quiet)
# The binary the suite compares its numbers with is the one `cargo test` built for the CLI's tests.
PATCHCLAMP_BIN="$PWD/target/debug/patchclamp" "$venv/bin/python" -m pytest -q -p no:cacheprovider crates/patchclamp-py/tests
