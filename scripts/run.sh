#!/usr/bin/env bash
# Humanline's main job, from a fresh clone: set up, then run a call through the IVR.
# (Until the SIP server lands this is a demo call; extra arguments go to `humanline simulate`.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bin=target/release/humanline
"$bin" check-config --prompts prompts
if [ $# -eq 0 ]; then
  set -- --say "my internet is down" --say "I want to talk to a human"
fi
exec "$bin" simulate --prompts prompts "$@"
