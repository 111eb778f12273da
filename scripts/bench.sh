#!/usr/bin/env bash
# Benchmarks switchboard against three peers over WebSocket, with the same scenarios in the
# same run: NATS (nats-server's websocket listener), Mosquitto (websockets listener, MQTT
# 3.1.1 QoS 0) and a minimal Node.js fan-out server on npm's `ws` (scripts/bench/node).
#
#   scripts/bench.sh                     # the full run, about 10 minutes
#   BENCH_QUICK=1 scripts/bench.sh       # a smoke run of about a minute
#   BENCH_TARGETS="switchboard nats"     # a subset of: switchboard nats mqtt nodews
#   BENCH_SCENARIOS="fanout idle"        # a subset of: ramp fanout paced rooms churn idle
#   BENCH_SCENARIOS=batch                # batched frames (not in the default list): fan-out
#                                        # 1 -> 100 and 100 rooms x 10 at max rate, switchboard
#                                        # with switchboard.v1.batch (label as is) and with
#                                        # plain v1 (label-v1), the peers as usual
#   BENCH_SCENARIOS=cluster              # scale-out (switchboard only, not in the default
#                                        # list): 3 nodes over one Redis against 1 node
#                                        # with the memory engine, fan-out and paced
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
#
# The cluster scenario starts its own redis-server (unix socket in the output directory, no
# persistence) and three switchboard nodes with `[engine] kind = "redis"` on ports
# 18001-18003, all pinned to core 0 and fresh for every run. Subscribers go round-robin over
# the three nodes, the publisher uses node 1; broker CPU is the sum over the three nodes,
# Redis CPU is reported apart. Then the same two runs against one node with the memory
# engine (the usual config on 18000). Labels: redis3-<run> and memory1-<run>.
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
# Absolute, because the cluster's Redis URL (a unix socket path) must be.
OUT=$(cd "$OUT" && pwd) LOGS=$(cd "$LOGS" && pwd) RESULTS=$OUT/results.jsonl

SB_PORT=18000
CLUSTER_PORTS=(18001 18002 18003)
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
CLUSTER=0
for scenario in "${SCENARIOS[@]}"; do [ "$scenario" = cluster ] && CLUSTER=1; done
if [ "$CLUSTER" = 1 ]; then
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v curl >/dev/null || missing+=(curl)
fi
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

ports=($SB_PORT $NATS_WS_PORT $NATS_PORT $MQTT_WS_PORT $MQTT_PORT $NODE_PORT)
[ "$CLUSTER" = 1 ] && ports+=("${CLUSTER_PORTS[@]}")
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "error: something already listens on 127.0.0.1:$port; stop it first" >&2
    exit 1
  fi
done

# switchboard's config: anonymous, loopback, a rate limit the publisher never hits, room for
# the rooms scenario's publisher (200 rooms, and at max rate the echo of every message it
# publishes plus its ack queued behind a window of 1,000: more than the default queue of
# 1,024 frames), and the same 10 s heartbeat as the peers.
sb_config() { # port
  cat <<EOF
[server]
bind = "127.0.0.1:$1"

[auth]
anonymous = true

[heartbeat]
interval = "${HEARTBEAT_S}s"
timeout = "$((HEARTBEAT_S * 3))s"

[limits]
messages_per_second = 10000000
burst = 10000000
max_rooms_per_session = 1000
outbound_queue_messages = 16384
EOF
}
sb_config $SB_PORT >"$OUT/switchboard.toml"
"$SB_BIN" check-config "$OUT/switchboard.toml"

# The cluster's nodes: the same config on their own ports, the Redis engine over the
# benchmark's own redis-server, and an outbox file each (no two processes share one).
if [ "$CLUSTER" = 1 ]; then
  REDIS_DIR=$OUT/redis
  REDIS_TMP=
  # A unix socket path must fit in 108 bytes.
  if [ ${#REDIS_DIR} -gt 90 ]; then
    REDIS_TMP=$(mktemp -d /tmp/sb-bench-redis.XXXXXX)
    REDIS_DIR=$REDIS_TMP
  fi
  mkdir -p "$REDIS_DIR"
  REDIS_SOCK=$REDIS_DIR/redis.sock
  for i in "${!CLUSTER_PORTS[@]}"; do
    {
      sb_config "${CLUSTER_PORTS[$i]}"
      cat <<EOF

[webhooks]
outbox_path = "$OUT/cluster-node$((i + 1))-webhooks.db"

[engine]
kind = "redis"

[redis]
url = "redis+unix://$REDIS_SOCK"
prefix = "bench"
EOF
    } >"$OUT/cluster-node$((i + 1)).toml"
    "$SB_BIN" check-config "$OUT/cluster-node$((i + 1)).toml"
  done
fi

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
  if [ "$CLUSTER" = 1 ]; then echo "redis:       $(redis-server --version)"; fi
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
# The cluster scenario's processes.
REDIS_PID=
NODE_PIDS=()

stop_cluster() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Redis goes last, once every node is gone.
  for pid in "${NODE_PIDS[@]}" $REDIS_PID; do
    if [ "$pid" = "$REDIS_PID" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    for _ in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  NODE_PIDS=()
  REDIS_PID=
}

cleanup() {
  stop_broker
  stop_cluster
  if [ -n "${REDIS_TMP:-}" ]; then rm -rf "$REDIS_TMP"; fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

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

# A redis-server of the benchmark's own (unix socket only, nothing saved), then the three
# nodes over it, each answering /readyz 200 (Redis reachable).
start_cluster() { # label
  local label=$1 rlog="$LOGS/redis-$1.log" i pid port up
  rm -f "$REDIS_SOCK"
  taskset -c 0 redis-server --port 0 --unixsocket "$REDIS_SOCK" --unixsocketperm 700 \
    --save '' --appendonly no --dir "$REDIS_DIR" >"$rlog" 2>&1 &
  REDIS_PID=$!
  up=0
  for _ in $(seq 1 100); do
    if ! kill -0 "$REDIS_PID" 2>/dev/null; then break; fi
    if [ -S "$REDIS_SOCK" ] && grep -qi 'ready to accept connections' "$rlog"; then
      up=1
      break
    fi
    sleep 0.1
  done
  if [ "$up" != 1 ]; then
    echo "error: redis-server did not start within 10 s; its log:" >&2
    cat "$rlog" >&2
    return 1
  fi
  for i in "${!CLUSTER_PORTS[@]}"; do
    taskset -c 0 "$SB_BIN" serve --config "$OUT/cluster-node$((i + 1)).toml" \
      >"$LOGS/switchboard-node$((i + 1))-$label.log" 2>&1 &
    NODE_PIDS+=($!)
  done
  for i in "${!CLUSTER_PORTS[@]}"; do
    pid=${NODE_PIDS[$i]} port=${CLUSTER_PORTS[$i]} up=0
    for _ in $(seq 1 150); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi
      if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz"; then
        up=1
        break
      fi
      sleep 0.1
    done
    if [ "$up" != 1 ]; then
      echo "error: cluster node $((i + 1)) (:$port) was not ready within 15 s; its log:" >&2
      cat "$LOGS/switchboard-node$((i + 1))-$label.log" >&2
      return 1
    fi
  done
  sleep 0.3
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
  BATCH_RUNS=("fanout100 fanout --subs 100 --messages 2000" "rooms100x10 rooms --rooms 100 --per-room 10 --messages 5000")
else
  RAMP=(ramp5000 idle --conns 5000 --rooms 100 --hold 0)
  FANOUT=(fanout1000 fanout --subs 1000 --messages 2000)
  PACED=(paced100x100 fanout --subs 100 --messages 1000 --rate 100)
  ROOMS=(rooms200x5 rooms --rooms 200 --per-room 5 --messages 20000 --rate 4000)
  CHURN=(churn churn --concurrency 50 --count 20000 --duration 10)
  IDLE=(idle10000 idle --conns 10000 --rooms 100 --hold 60)
  BATCH_RUNS=("fanout100 fanout --subs 100 --messages 100000" "rooms100x10 rooms --rooms 100 --per-room 10 --messages 100000")
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

# One run against the cluster: subscribers round-robin over the nodes, the publisher on
# node 1, broker CPU summed over the nodes' PIDs, Redis CPU apart.
run_cluster() { # label args...
  local label=$1 i pid pids args=()
  shift
  log "$label: switchboard, ${#CLUSTER_PORTS[@]} nodes over Redis"
  if ! start_cluster "$label"; then
    echo "{\"target\":\"switchboard\",\"label\":\"$label\",\"error\":\"cluster did not start\"}" >>"$RESULTS"
    stop_cluster
    return 0
  fi
  for i in "${!CLUSTER_PORTS[@]}"; do args+=(--url "ws://127.0.0.1:${CLUSTER_PORTS[$i]}/ws"); done
  pids=$(IFS=,; echo "${NODE_PIDS[*]}")
  timeout --signal=INT 400 taskset -c 1 "$LG_BIN" --target switchboard "${args[@]}" \
    --broker-pid "$pids" --redis-pid "$REDIS_PID" \
    --label "$label" --json-out "$RESULTS" "$@" 2>&1 | tee -a "$LOGS/loadgen.log" ||
    echo "loadgen failed for switchboard/$label (exit ${PIPESTATUS[0]})" | tee -a "$LOGS/loadgen.log"
  for i in "${!NODE_PIDS[@]}"; do
    pid=${NODE_PIDS[$i]}
    kill -0 "$pid" 2>/dev/null ||
      echo "warning: cluster node $((i + 1)) (pid $pid) died during $label" | tee -a "$LOGS/loadgen.log"
  done
  kill -0 "$REDIS_PID" 2>/dev/null ||
    echo "warning: redis-server (pid $REDIS_PID) died during $label" | tee -a "$LOGS/loadgen.log"
  stop_cluster
  sleep "$PAUSE"
}

started=$(date +%s)
for scenario in "${SCENARIOS[@]}"; do
  if [ "$scenario" = cluster ]; then
    sb=0
    for target in "${TARGETS[@]}"; do
      if [ "$target" = switchboard ]; then
        sb=1
      else
        log "cluster: $target skipped (the cluster scenario is switchboard only)"
      fi
    done
    [ "$sb" = 1 ] || continue
    run_cluster "redis3-${FANOUT[0]}" "${FANOUT[@]:1}"
    run_cluster "redis3-${PACED[0]}" "${PACED[@]:1}"
    run switchboard "memory1-${FANOUT[0]}" "${FANOUT[@]:1}"
    run switchboard "memory1-${PACED[0]}" "${PACED[@]:1}"
    continue
  fi
  if [ "$scenario" = batch ]; then
    for entry in "${BATCH_RUNS[@]}"; do
      read -r -a spec <<<"$entry"
      for target in "${TARGETS[@]}"; do
        if [ "$target" = switchboard ]; then
          run switchboard "${spec[0]}" --subprotocol switchboard.v1.batch "${spec[@]:1}"
          run switchboard "${spec[0]}-v1" "${spec[@]:1}"
        else
          run "$target" "${spec[@]}"
        fi
      done
    done
    continue
  fi
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
