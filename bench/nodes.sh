#!/usr/bin/env bash
# Several nodes: call setups per second through Kamailio (deploy/kamailio/kamailio.cfg) to one
# Humanline node and to two, in the same run, all on 127.0.0.1. A private PostgreSQL is the
# nodes' shared ledger (as in a deployment); each call is INVITE/200/ACK/BYE through Kamailio
# (tests/sipp/caller_routed.xml: the ACK and BYE follow the record-route), no speech.
# For each node count and rate: SECS seconds of calls; the highest rate with no failed call.
# Writes bench/results/nodes.json. Usage: bench/nodes.sh [SECS] [RATES...]
#   (default 10 s at 50 100 200 400 calls/s)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release/humanline
secs=${1:-10}
shift || true
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(50 100 200 400)
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${kam:-}" ] && kill -TERM -- "-$kam" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL (refuses root: run as postgres when we are root).
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups); fi
mkdir -p "$work/pg" && { [ ${#as_pg[@]} -eq 0 ] || chown postgres:postgres "$work/pg"; }
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg/data" -U humanline --auth=trust --no-sync >/dev/null
pgport=25499
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg/data" -p $pgport -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$work/pg" 2>"$work/pg.log" &
pids+=($!)
for _ in $(seq 100); do
  "$pgbin/pg_isready" -q -h 127.0.0.1 -p $pgport && break
  sleep 0.1
done
url="postgres://humanline@127.0.0.1:$pgport/postgres"

start_node() { # name sip http rtp
  cat >"$work/$1.toml" <<TOML
node = "$1"
store = "$url"
sip_listen = "127.0.0.1:$2"
http_listen = "127.0.0.1:$3"
rtp_ports = "$4"
data_dir = "$work/data-$1"
[admission]
max_calls = 10000
max_new_calls_per_second = 1000
TOML
  HUMANLINE_LOG=warn "$bin" serve --config "$work/$1.toml" --prompts prompts \
    --model models/ggml-tiny.en.bin --decode-threads 1 2>"$work/$1.log" &
  pids+=($!)
  for _ in $(seq 300); do grep -q "ready" "$work/$1.log" 2>/dev/null && return; sleep 0.1; done
  echo "node $1 did not start" >&2
  cat "$work/$1.log" >&2
  exit 1
}
start_node a 5270 8270 30000-34999
start_node b 5272 8272 35000-39999

start_kamailio() { # node ports...
  printf '1 sip:127.0.0.1:%s\n' "$@" >"$work/dispatcher.list"
  mkdir -p "$work/kam"
  setsid kamailio -f deploy/kamailio/kamailio.cfg -A "HL_LISTEN=udp:127.0.0.1:5260" \
    -A "HL_NODES=\"$work/dispatcher.list\"" -DD -E -m 128 -M 8 -Y "$work/kam" -P "$work/kam/pid" \
    2>"$work/kamailio.log" &
  kam=$!
  sleep 2
}
stop_kamailio() {
  kill -TERM -- "-$kam" 2>/dev/null || true
  wait "$kam" 2>/dev/null || true
  kam=""
}

sed -e 's#@CALLER@#+15550100#g' -e 's#@RTP_PORT@#16200#g' -e 's#@HOLD_MS@#0#g' \
  tests/sipp/caller_routed.xml >"$work/caller.xml"
runs=()
declare -A best=([1]=0 [2]=0)
for nodes in 1 2; do
  if [ $nodes = 1 ]; then start_kamailio 5270; else start_kamailio 5270 5272; fi
  for rate in "${rates[@]}"; do
    sipp 127.0.0.1:5260 -sf "$work/caller.xml" -i 127.0.0.1 -p 5263 -mp 16300 -r "$rate" \
      -m $((rate * secs)) -nostdin -timeout $((secs + 30))s >"$work/sipp.out" 2>&1 || true
    ok=$(grep "Successful call" "$work/sipp.out" | awk '{print $NF}')
    failed=$(grep "Failed call" "$work/sipp.out" | awk '{print $NF}')
    cps=$(grep "Call Rate" "$work/sipp.out" | awk '{print $(NF-1)}')
    echo "$nodes node(s), rate $rate: ${ok:-0} ok, ${failed:-?} failed, ${cps:-0} cps" >&2
    runs+=("{\"nodes\":$nodes,\"rate\":$rate,\"successful\":${ok:-0},\"failed\":${failed:-0},\"cps\":${cps:-0}}")
    if [ "${failed:-1}" = 0 ] && [ "${ok:-0}" -gt 0 ]; then best[$nodes]=$rate; fi
    sleep 3 # calls of this rate end before the next starts
  done
  stop_kamailio
done
mkdir -p bench/results
cat >bench/results/nodes.json <<JSON
{
  "command": "bench/nodes.sh $secs ${rates[*]}",
  "machine_cores": $(nproc),
  "load_average_at_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "secs_per_rate": $secs,
  "runs": [$(IFS=,; echo "${runs[*]}")],
  "max_rate_zero_failures": {"one_node": ${best[1]}, "two_nodes": ${best[2]}}
}
JSON
cat bench/results/nodes.json
