#!/usr/bin/env bash
# Humanline's main job, from a fresh clone: set up (packages, build, speech model), then run the
# IVR server with its embedded defaults: SIP on 127.0.0.1:5060 (UDP and TCP), HTTP on
# 127.0.0.1:8080, the bundled prompts, the callback ledger in data/callbacks.db.
# Extra arguments go to `humanline serve`, e.g. --agent sip:alice@127.0.0.1:5070
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=target/release/humanline
"$bin" check-config --prompts prompts
export HUMANLINE_LOG="${HUMANLINE_LOG:-info,rsipstack=warn}"
# No --model: that would force one model on every language (tiny.en is English-only, so Dutch
# callers would not be understood). Each language loads its own from models/ (prompts/*.toml).
exec "$bin" serve --prompts prompts "$@"
