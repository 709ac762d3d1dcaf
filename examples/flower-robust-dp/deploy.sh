#!/usr/bin/env bash
# A real local Flower deployment on 127.0.0.1: one SuperLink, N SuperNodes, then `flwr run` of this app.
# Every process started here is stopped on exit. Prints the final aggregate's accuracy.
#
# Environment: PYTHON_BIN_DIR (default: the repo's .venv/bin), NODES (10), PORT (SuperLink HTTP port, 39201),
# NODE_PORT_BASE (first SuperNode runtime port, 39300), RUN_TIMEOUT_S (600), WORK (a fresh temp dir),
# `flwr run` config overrides in RUN_CONFIG (default: 'num-server-rounds=2', SecAgg+ with Median and DP; every
# SecAgg+ stage starts one ClientApp process per node, about 1 min per stage for 10 nodes on 2 cores, so a secure
# round takes about 5 min there; RUN_CONFIG='secure=false' runs 5 plaintext rounds in about 3 min).
# TWO_SERVER=1: the two-server protocol instead of SecAgg+: S1 (Krum, f=2, bound 5) and the dealer are started
# here as their own processes on 127.0.0.1 (python -m benchmarks.twoserver_serve) and the ServerApp is S0;
# one message per node per round (RUN_CONFIG then defaults to 'num-server-rounds=2 rule="krum"').
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="${PYTHON_BIN_DIR:-$REPO/.venv/bin}"
NODES="${NODES:-10}"
PORT="${PORT:-39201}"
NODE_PORT_BASE="${NODE_PORT_BASE:-39300}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-1200}"
TWO_SERVER="${TWO_SERVER:-0}"
if [[ "$TWO_SERVER" == 1 ]]; then RUN_CONFIG="${RUN_CONFIG:-num-server-rounds=2 rule=\"krum\"}"; fi
RUN_CONFIG="${RUN_CONFIG:-num-server-rounds=2}"
WORK="${WORK:-$(mktemp -d /tmp/flower-robust-dp.XXXXXX)}"
RESULT="$WORK/result.json"

# No telemetry, no update check, no runtime `uv sync`, Ray (if any) local-only, one thread per process.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 UV_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export FLWR_HOME="$WORK/flwr-home"   # a private Flower home: its own config.toml, app installs, no ~/.flwr
export PATH="$BIN:$PATH"             # flower-superexec and flwr-* helpers are found next to flower-superlink
mkdir -p "$FLWR_HOME" "$WORK/logs"

PIDS=()
stop_all() {
  local rc=$?
  # the SuperLink/SuperNodes start their SuperExec (and app) processes in new sessions: stop the children too
  local all=()
  for pid in "${PIDS[@]}"; do
    all+=("$pid")
    while read -r child; do [[ -n "$child" ]] && all+=("$child"); done < <(pgrep -P "$pid" || true)
  done
  for pid in "${all[@]}"; do
    while read -r grandchild; do [[ -n "$grandchild" ]] && all+=("$grandchild"); done < <(pgrep -P "$pid" || true)
  done
  for pid in "${all[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.2
  done
  for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  echo "deploy.sh: stopped ${#all[@]} processes; logs in $WORK/logs" >&2
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_http() {  # wait_http URL SECONDS
  local deadline=$((SECONDS + $2))
  until "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; do
    (( SECONDS < deadline )) || { echo "deploy.sh: $1 not up after $2 s" >&2; return 1; }
    sleep 0.5
  done
}

"$BIN/flower-superlink" --insecure --host 127.0.0.1 --port "$PORT" --disable-runtime-dependency-installation \
  > "$WORK/logs/superlink.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/health" 60

for ((k = 0; k < NODES; k++)); do
  "$BIN/flower-supernode" --insecure --superlink "127.0.0.1:$PORT" --host 127.0.0.1 --port $((NODE_PORT_BASE + k)) \
    --node-config "partition-id=$k num-partitions=$NODES" > "$WORK/logs/supernode-$k.log" 2>&1 &
  PIDS+=($!)
done

if [[ "$TWO_SERVER" == 1 ]]; then  # S1 (its operator's rule and bound) and the dealer, each a process
  "$BIN/python" -m benchmarks.twoserver_serve --role s1 --rule krum --param f=2 --bound 5.0 \
    --ready-file "$WORK/s1.json" --lifetime-s "$RUN_TIMEOUT_S" > "$WORK/logs/s1.log" 2>&1 &
  PIDS+=($!)
  "$BIN/python" -m benchmarks.twoserver_serve --role dealer --ready-file "$WORK/dealer.json" \
    --lifetime-s "$RUN_TIMEOUT_S" > "$WORK/logs/dealer.log" 2>&1 &
  PIDS+=($!)
  for f in s1 dealer; do
    for _ in $(seq 240); do [[ -s "$WORK/$f.json" ]] && break; sleep 0.5; done
    [[ -s "$WORK/$f.json" ]] || { echo "deploy.sh: $f did not start" >&2; exit 1; }
  done
  field() { "$BIN/python" -c "import json, sys; d = json.load(open(sys.argv[1])); print(d['host'] + ':' + str(d['port']) if sys.argv[2] == 'address' else d['public'])" "$1" "$2"; }
  RUN_CONFIG="$RUN_CONFIG secure=true protocol=\"two-server\" s1-address=\"$(field "$WORK/s1.json" address)\" s1-public=\"$(field "$WORK/s1.json" public)\" dealer-address=\"$(field "$WORK/dealer.json" address)\" dealer-public=\"$(field "$WORK/dealer.json" public)\""
fi

cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-deployment"

[superlink.local-deployment]
address = "127.0.0.1:$PORT"
insecure = true
TOML

# shellcheck disable=SC2086
"$BIN/flwr" run "$HERE" local-deployment --stream \
  --run-config "num-nodes=$NODES result-path=\"$RESULT\" ${RUN_CONFIG:-}" > "$WORK/logs/flwr-run.log" 2>&1 &
RUN_PID=$!
PIDS+=($RUN_PID)

deadline=$((SECONDS + RUN_TIMEOUT_S))
until [[ -s "$RESULT" ]]; do
  if (( SECONDS >= deadline )); then echo "deploy.sh: no result after $RUN_TIMEOUT_S s" >&2; tail -20 "$WORK/logs/flwr-run.log" >&2; exit 1; fi
  sleep 1
done
sleep 0.5  # the JSON is written in one call; let it land
"$BIN/python" - "$RESULT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
last = r["history"][str(r["rounds_done"])]
print(f"final accuracy: {r['final_accuracy']:.4f} after {r['rounds_done']} rounds"
      f" (rule={r['config']['rule']}, dp={r['config']['dp']}, attack={r['config']['attack']},"
      f" dp_epsilon={last.get('dp_epsilon', 'n/a')})")
PY
echo "result: $RESULT"
