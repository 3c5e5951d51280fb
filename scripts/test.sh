#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set-up (packages, build, model), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export WHISPER_DONT_GENERATE_BINDINGS=1
if [ "$(uname -m)" = x86_64 ]; then
  export GGML_NATIVE=OFF GGML_AVX=ON GGML_AVX2=ON GGML_FMA=ON GGML_F16C=ON
fi
# Real peers are installed by setup.sh: a missing one fails the tests instead of skipping them.
export HUMANLINE_REQUIRE_SIPP=1
export HUMANLINE_MODEL="$PWD/models/ggml-tiny.en.bin"
# Release profile: the same build as set-up made, and whisper at full speed.
cargo test --release --locked -- --test-threads=2
