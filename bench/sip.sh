#!/usr/bin/env bash
# SIP benchmark of `humanline serve`, all on 127.0.0.1, with sipp (INVITE/200/ACK/BYE, no speech):
#  1. call setup rate: for each rate, 20 s of calls; the highest rate with zero failed calls;
#  2. memory per active call: RSS with N calls held open against RSS idle (fresh server).
# Writes bench/results/sip.json. Usage: bench/sip.sh [RATES...] (default 250 500 1000 1500 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/humanline
rates=("${@:-250}")
[ $# -gt 0 ] || rates=(250 500 1000 1500 2000)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
start_server() {
  HUMANLINE_LOG=warn "$bin" serve --prompts prompts --model models/ggml-tiny.en.bin --sip-listen 127.0.0.1:5072 \
    --http-listen 127.0.0.1:8072 --rtp-ports 30000-39999 --data-dir "$work/data" 2>"$work/server.log" &
  server=$!
  for _ in $(seq 100); do grep -q "ready" "$work/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; exit 1
}
results=()
best=0
for rate in "${rates[@]}"; do
  start_server
  sipp -sn uac 127.0.0.1:5072 -i 127.0.0.1 -p 5063 -mp 16100 -r "$rate" -m $((rate * 20)) -d 0 -nostdin \
    -timeout 60s >"$work/sipp.out" 2>&1 || true
  ok=$(grep "Successful call" "$work/sipp.out" | awk '{print $NF}')
  failed=$(grep "Failed call" "$work/sipp.out" | awk '{print $NF}')
  cps=$(grep "Call Rate" "$work/sipp.out" | awk '{print $(NF-1)}')
  echo "rate $rate: $ok ok, $failed failed, $cps cps" >&2
  results+=("{\"rate\":$rate,\"successful\":${ok:-0},\"failed\":${failed:-0},\"cps\":${cps:-0}}")
  [ "${failed:-1}" = 0 ] && [ "${ok:-0}" -gt 0 ] && best=$rate
  kill "$server"; wait "$server" 2>/dev/null || true
done
start_server
idle=$(ps -o rss= -p "$server")
held=500
sipp -sn uac 127.0.0.1:5072 -i 127.0.0.1 -p 5063 -mp 16100 -r 100 -m $held -d 15000 -nostdin >"$work/mem.out" 2>&1 &
sleep 8
active=$(curl -s 127.0.0.1:8072/metrics | awk '/^humanline_active_calls/ {print $2}')
busy=$(ps -o rss= -p "$server")
wait %2 2>/dev/null || true
per_call=$(( (busy - idle) / (active > 0 ? active : 1) ))
echo "memory: idle ${idle} KB, ${active} active calls ${busy} KB, ${per_call} KB per call" >&2
mkdir -p bench/results
cat >bench/results/sip.json <<JSON
{
  "command": "bench/sip.sh ${rates[*]}",
  "machine_cores": $(nproc),
  "setup_rate": [$(IFS=,; echo "${results[*]}")],
  "max_rate_zero_failures": $best,
  "memory": {"idle_rss_kb": $idle, "active_calls": $active, "rss_kb": $busy, "kb_per_active_call": $per_call}
}
JSON
cat bench/results/sip.json
