#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for MINUTES minutes each (default 5), one after the other:
#   scripts/fuzz.sh [MINUTES] [TARGET...]
# Installs cargo-fuzz from crates.io when it is missing. Needs a nightly toolchain
# (`rustup toolchain install nightly`); without one, RUSTC_BOOTSTRAP=1 lets stable build it.
# New inputs go to fuzz/logs/corpus-<target>/ (scratch, not committed); a crash is saved
# under fuzz/artifacts/<target>/: fix it, then copy the input into fuzz/corpus/<target>/ so
# `cargo test --test fuzz_corpus` keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-5}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(sip_filter sdp rtp dtmf prompts_toml spoken_time spoken_number)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=+nightly
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain, building with RUSTC_BOOTSTRAP=1 on stable" >&2
    toolchain=
    export RUSTC_BOOTSTRAP=1
fi
export WHISPER_DONT_GENERATE_BINDINGS=1 GGML_NATIVE=OFF
# -s none: the targets are safe Rust; AddressSanitizer adds nothing but cost here
# (-O: release, debug assertions and overflow checks on, as cargo-fuzz builds by default)
cargo $toolchain fuzz build -s none -O
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    log="fuzz/logs/$t.log"
    echo "fuzz: $t for $minutes min -> $log" >&2
    # new inputs go to the first folder (scratch), the repository's corpus only seeds
    mkdir -p "fuzz/logs/corpus-$t"
    cargo $toolchain fuzz run -s none -O "$t" "fuzz/logs/corpus-$t" "fuzz/corpus/$t" -- \
        -max_total_time=$((minutes * 60)) -max_len=4096 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || echo "fuzz: $t stopped with a failure (see $log, fuzz/artifacts/$t/)" >&2
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs|SUMMARY|crash-|deadly signal" "$log" | tail -5 >&2 || true
done
