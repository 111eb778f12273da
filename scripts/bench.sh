#!/usr/bin/env bash
# Benchmarks switchboard against three peers over WebSocket, with the same scenarios in the
# same run: NATS (nats-server's websocket listener), Mosquitto (websockets listener, MQTT
# 3.1.1 QoS 0) and a minimal Node.js fan-out server on npm's `ws` (scripts/bench/node).
#
#   scripts/bench.sh                     # the full run, about 10 minutes
#   BENCH_QUICK=1 scripts/bench.sh       # a smoke run of about a minute
#   BENCH_TARGETS="switchboard nats"     # a subset of: switchboard nats mqtt nodews
#   BENCH_SCENARIOS="fanout idle"        # a subset of: ramp fanout paced rooms churn idle
#   BENCH_PERF=1                         # also profile switchboard (perf, cpu-clock) during
#                                        # the max-rate fan-out (perf-<label>.txt)
#   BENCH_OUT=DIR                        # where results go (default target/bench/<time>)
#   BENCH_SWITCHBOARD_BIN=PATH           # benchmark this switchboard binary instead of the
#                                        # tree's release build (e.g. an older commit's)
#
# Every broker is its own instance on its own loopback ports (the machine's own nats-server
# on 4222 and mosquitto on 1883 are left alone), started fresh for every scenario, pinned to
# core 0, and stopped by PID; the load generator (tools/loadgen) is pinned to core 1.
# Missing packages are installed with apt-get, the Node server's dependency with npm.
# Output: results.jsonl (one JSON line per run), table.md, versions.txt and logs/ in the
# output directory; the table is printed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/scripts/bench
cd "$ROOT"
export PATH="$PATH:/usr/sbin:/sbin"

QUICK=${BENCH_QUICK:-0}
read -r -a TARGETS <<<"${BENCH_TARGETS:-switchboard nats mqtt nodews}"
read -r -a SCENARIOS <<<"${BENCH_SCENARIOS:-ramp fanout paced rooms churn idle}"
OUT=${BENCH_OUT:-$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
LOGS=$OUT/logs
RESULTS=$OUT/results.jsonl
mkdir -p "$LOGS"

SB_PORT=18000
NATS_WS_PORT=18222 NATS_PORT=18224
MQTT_WS_PORT=18083 MQTT_PORT=18883
NODE_PORT=18090
HEARTBEAT_S=10

log() { printf '\n\033[1m[bench] %s\033[0m\n' "$*"; }

# --- prerequisites -----------------------------------------------------------------------

SUDO=
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

apt_install() {
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y --no-install-recommends "$@"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "$@"
  fi
}

missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

if [ ! -f "$BENCH/node/node_modules/ws/package.json" ]; then
  log "installing the Node server's dependencies (npm ci)"
  (cd "$BENCH/node" && npm ci --no-audit --no-fund)
fi

# With BENCH_PERF the broker is built with the `profiling` profile (release plus debug
# info), so perf can name functions; otherwise the release profile, as shipped.
SB_PROFILE=release
[ "${BENCH_PERF:-0}" = 1 ] && SB_PROFILE=profiling
log "building switchboard ($SB_PROFILE) and loadgen (release)"
cargo build --profile "$SB_PROFILE" --bin switchboard
cargo build --release -p loadgen
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TARGET_DIR=${TARGET_DIR:-$ROOT/target}
SB_BIN=${BENCH_SWITCHBOARD_BIN:-$TARGET_DIR/$SB_PROFILE/switchboard}
LG_BIN=$TARGET_DIR/release/loadgen

# 10,000 connections on each side, plus margin.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 12000 ]; then
  echo "warning: open-file limit is $(ulimit -n); the idle scenario needs over 10,000" >&2
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "warning: fewer than 2 cores: broker and load generator will share one" >&2
fi

for port in $SB_PORT $NATS_WS_PORT $NATS_PORT $MQTT_WS_PORT $MQTT_PORT $NODE_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: something already listens on 127.0.0.1:$port; stop it first" >&2
    exit 1
  fi
done

# switchboard's config: anonymous, loopback, a rate limit the publisher never hits, room for
# the rooms scenario's publisher (200 rooms), and the same 10 s heartbeat as the peers.
cat >"$OUT/switchboard.toml" <<EOF
[server]
bind = "127.0.0.1:$SB_PORT"

[auth]
anonymous = true

[heartbeat]
interval = "${HEARTBEAT_S}s"
timeout = "$((HEARTBEAT_S * 3))s"

[limits]
messages_per_second = 10000000
burst = 10000000
max_rooms_per_session = 1000
EOF
"$SB_BIN" check-config "$OUT/switchboard.toml"

# --- versions ----------------------------------------------------------------------------

{
  dirty=$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l)
  if [ -n "${BENCH_SWITCHBOARD_BIN:-}" ]; then
    echo "switchboard: $BENCH_SWITCHBOARD_BIN"
  else
    echo "switchboard: $(git rev-parse HEAD 2>/dev/null || echo unknown)$([ "$dirty" -gt 0 ] && echo " + uncommitted changes in $dirty files")"
  fi
  echo "rustc:       $(rustc --version)"
  echo "nats-server: $(nats-server --version 2>&1)"
  echo "mosquitto:   $(mosquitto -h 2>&1 | head -1)"
  echo "node:        $(node --version)"
  echo "ws:          $(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$BENCH/node/node_modules/ws/package.json" | head -1)"
  echo "kernel:      $(uname -sr)"
  echo "cpu:         $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores"
  echo "memory:      $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  echo "mode:        $([ "$QUICK" = 1 ] && echo quick || echo full)"
} | tee "$OUT/versions.txt"

# --- brokers -----------------------------------------------------------------------------

BROKER_PID=
PERF_PID=

stop_broker() {
  if [ -n "$PERF_PID" ] && kill -0 "$PERF_PID" 2>/dev/null; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
  fi
  PERF_PID=
  if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do
      kill -0 "$BROKER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  BROKER_PID=
}
trap stop_broker EXIT
trap 'stop_broker; exit 130' INT TERM

port_of() {
  case $1 in
    switchboard) echo $SB_PORT ;;
    nats) echo $NATS_WS_PORT ;;
    mqtt) echo $MQTT_WS_PORT ;;
    nodews) echo $NODE_PORT ;;
  esac
}

start_broker() { # target label
  local target=$1 blog="$LOGS/$1-$2.log" port
  port=$(port_of "$target")
  case $target in
    switchboard)
      taskset -c 0 "$SB_BIN" serve --config "$OUT/switchboard.toml" >"$blog" 2>&1 &
      ;;
    nats)
      taskset -c 0 nats-server -c "$BENCH/nats.conf" >"$blog" 2>&1 &
      ;;
    mqtt)
      taskset -c 0 mosquitto -c "$BENCH/mosquitto.conf" >"$blog" 2>&1 &
      ;;
    nodews)
      HOST=127.0.0.1 PORT=$NODE_PORT HEARTBEAT_MS=$((HEARTBEAT_S * 1000)) \
        taskset -c 0 node "$BENCH/node/server.js" >"$blog" 2>&1 &
      ;;
  esac
  BROKER_PID=$!
  for _ in $(seq 1 150); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "error: $target exited at start; its log:" >&2
      cat "$blog" >&2
      BROKER_PID=
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      sleep 0.3
      return 0
    fi
    sleep 0.1
  done
  echo "error: $target did not listen on $port within 15 s" >&2
  stop_broker
  return 1
}

# --- scenarios ---------------------------------------------------------------------------

# Each entry: label, then loadgen arguments. PAUSE: seconds between runs.
PAUSE=1
if [ "$QUICK" = 1 ]; then
  PAUSE=0.3
  RAMP=(ramp1000 idle --conns 1000 --rooms 100 --hold 0)
  FANOUT=(fanout200 fanout --subs 200 --messages 300)
  PACED=(paced100x50 fanout --subs 50 --messages 200 --rate 100)
  ROOMS=(rooms20x5 rooms --rooms 20 --per-room 5 --messages 2000 --rate 1000)
  CHURN=(churn churn --concurrency 20 --count 300 --duration 5)
  IDLE=(idle1000 idle --conns 1000 --rooms 100 --hold 3)
else
  RAMP=(ramp5000 idle --conns 5000 --rooms 100 --hold 0)
  FANOUT=(fanout1000 fanout --subs 1000 --messages 2000)
  PACED=(paced100x100 fanout --subs 100 --messages 1000 --rate 100)
  ROOMS=(rooms200x5 rooms --rooms 200 --per-room 5 --messages 20000 --rate 4000)
  CHURN=(churn churn --concurrency 50 --count 20000 --duration 10)
  IDLE=(idle10000 idle --conns 10000 --rooms 100 --hold 60)
fi

run() { # target label args...
  local target=$1 label=$2
  shift 2
  log "$label: $target"
  if ! start_broker "$target" "$label"; then
    echo "{\"target\":\"$target\",\"label\":\"$label\",\"error\":\"broker did not start\"}" >>"$RESULTS"
    return 0
  fi
  if [ "${BENCH_PERF:-0}" = 1 ] && [ "$target" = switchboard ] && [ "$label" = "${FANOUT[0]}" ] &&
    command -v perf >/dev/null; then
    perf record -e cpu-clock -F 999 -g -p "$BROKER_PID" -o "$OUT/perf-$label.data" \
      >"$LOGS/perf-$label.log" 2>&1 &
    PERF_PID=$!
  fi
  timeout --signal=INT 400 taskset -c 1 "$LG_BIN" --target "$target" --broker-pid "$BROKER_PID" \
    --label "$label" --json-out "$RESULTS" "$@" 2>&1 | tee -a "$LOGS/loadgen.log" ||
    echo "loadgen failed for $target/$label (exit ${PIPESTATUS[0]})" | tee -a "$LOGS/loadgen.log"
  if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=
    perf report -i "$OUT/perf-$label.data" --no-children --percent-limit 0.8 --stdio -g none \
      >"$OUT/perf-$label.txt" 2>/dev/null || true
  fi
  stop_broker
  sleep "$PAUSE"
}

started=$(date +%s)
for scenario in "${SCENARIOS[@]}"; do
  case $scenario in
    ramp) spec=("${RAMP[@]}") ;;
    fanout) spec=("${FANOUT[@]}") ;;
    paced) spec=("${PACED[@]}") ;;
    rooms) spec=("${ROOMS[@]}") ;;
    churn) spec=("${CHURN[@]}") ;;
    idle) spec=("${IDLE[@]}") ;;
    *)
      echo "unknown scenario $scenario" >&2
      exit 2
      ;;
  esac
  for target in "${TARGETS[@]}"; do
    run "$target" "${spec[@]}"
  done
done

log "done in $(($(date +%s) - started)) s; results in $OUT"
cat "$OUT/versions.txt"
echo
"$LG_BIN" table "$RESULTS" | tee "$OUT/table.md"
