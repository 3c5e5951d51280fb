#!/usr/bin/env bash
# Dutch escape settings compared on the same recorded decodes: the call brain replays each
# saved live run (`humanline bench rescore`) with prompts/ as shipped and with its Dutch
# partial confirmation (`[escape] confirm_partials`) and the verifier's transcript floor
# (`[verifier] escape_transcript_floor`) turned off, one or both. No decoding: seconds.
#
#   bench/rescore_nl.sh [humanline binary]     (default target/release/humanline)
#
# Runs: tuning voices (nl, nl+m1, nl+m3; --every 4), held-out voices (nl+f2, nl+f3, nl+f4;
# --every 2 --voices), real recorded Dutch (--split all --every 16). Writes
# bench/results/speech-nl-rescored-<run>-<variant>.json and prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/humanline}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
runs=(
  "tune:bench/results/speech-nl-live-every4.transcripts.json"
  "held:bench/results/speech-nl-heldout-every2.transcripts.json"
  "real:bench/results/speech-nl-real-live-every16.transcripts.json"
)
variant() { # name sed-script
  local d=$tmp/$1
  mkdir -p "$d"
  cp -r prompts "$d/prompts"
  ln -s "$PWD/audio" "$d/audio"
  ln -s "$PWD/models" "$d/models"
  sed -i "$2" "$d/prompts/nl.toml"
}
variant before 's/^confirm_partials = true/confirm_partials = false/; /^escape_transcript_floor = /d'
variant confirm-only '/^escape_transcript_floor = /d'
variant floor-only 's/^confirm_partials = true/confirm_partials = false/'
variant shipped ''
echo "| settings | tuning voices: escapes routed, false escapes, route ms median/p95, escapes heard by the second turn + sent on as not understood twice | held-out voices | real voices: false escapes |"
echo "|---|---|---|---|"
for v in before confirm-only floor-only shipped; do
  row="| $v"
  for r in "${runs[@]}"; do
    name=${r%%:*} file=${r#*:}
    out=bench/results/speech-nl-rescored-$name-$v.json
    "$bin" bench rescore "$file" --prompts "$tmp/$v/prompts" --out "$out" >/dev/null 2>"$tmp/err" ||
      { cat "$tmp/err" >&2; exit 1; }
    row+=$(python3 - "$out" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))["humanline"]
r = h["route_after_speech_end_ms"]
escapes = h["utterances"] - h["ordinary"]
if h["escape_recall"] is None:
    print(f" | {h['false_escapes']}/{h['ordinary']}", end="")
else:
    heard = h.get("escape_heard_by_the_second_turn", "?")
    twice = h.get("escape_not_understood_twice", "?")
    print(f" | {r['n']}/{escapes}, {h['false_escapes']}/{h['ordinary']}, {r['median']:.0f}/{r['p95']:.0f}, {heard} + {twice}", end="")
PY
)
  done
  echo "$row |"
done
