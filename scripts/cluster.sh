#!/usr/bin/env bash
# A local three-node switchboard cluster over one Redis, for trying the Redis engine:
#
#   scripts/cluster.sh            # start redis-server and three brokers, wait for Ctrl-C
#   CLUSTER_NODES=5 scripts/cluster.sh
#   CLUSTER_BIN=target/debug/switchboard  # another build
#   CLUSTER_DIR=/tmp/sb-cluster   # where configs, logs and the Redis socket go
#                                 # (default: a fresh temporary directory)
#
# Redis listens on a unix socket in that directory (never the machine's Redis, whose data
# is left alone); brokers listen on 127.0.0.1:8001, :8002, … with the same HS256 secret
# and API key, generated on the spot. Ctrl-C (or SIGTERM) stops every process it started,
# by PID. The release binary is built first if it is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NODES=${CLUSTER_NODES:-3}
DIR=${CLUSTER_DIR:-$(mktemp -d -t switchboard-cluster.XXXXXX)}
BIN=${CLUSTER_BIN:-$ROOT/target/release/switchboard}
mkdir -p "$DIR"

command -v redis-server >/dev/null || {
  echo "redis-server is not installed (apt-get install redis-server)" >&2
  exit 1
}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --bin switchboard)

PIDS=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping ${#PIDS[@]} processes"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

SOCKET=$DIR/redis.sock
redis-server --port 0 --unixsocket "$SOCKET" --save '' --appendonly no --dir "$DIR" \
  >"$DIR/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$SOCKET" ] && break; sleep 0.1; done
[ -S "$SOCKET" ] || { echo "redis-server did not start; see $DIR/redis.log" >&2; exit 1; }

SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
KEY=$(head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
for i in $(seq "$NODES"); do
  port=$((8000 + i))
  cat >"$DIR/node$i.toml" <<EOF
[server]
bind = "127.0.0.1:$port"

[auth]
hs256_secret = "$SECRET"

[api]
keys = ["$KEY"]

[webhooks]
outbox_path = "$DIR/node$i-outbox.sqlite3"

[engine]
kind = "redis"

[redis]
url = "redis+unix://$SOCKET"

[namespaces.conversation]
presence = true
EOF
  RUST_LOG=${RUST_LOG:-info} "$BIN" --config "$DIR/node$i.toml" >"$DIR/node$i.log" 2>&1 &
  PIDS+=($!)
done

for i in $(seq "$NODES"); do
  port=$((8000 + i))
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 ||
    { echo "node $i did not become ready; see $DIR/node$i.log" >&2; exit 1; }
done

cat <<EOF

$NODES switchboard nodes over one Redis ($SOCKET), files in $DIR:
$(for i in $(seq "$NODES"); do echo "  node $i  ws://127.0.0.1:$((8000 + i))/ws   http://127.0.0.1:$((8000 + i))/api/docs/"; done)

A token (any node accepts it):
  $BIN token --config $DIR/node1.toml --sub alice --room 'conversation:*'
Publish through node 2, received on every node:
  curl -H 'Authorization: Bearer $KEY' -H 'Content-Type: application/json' \\
    -d '{"payload":{"text":"hi"}}' http://127.0.0.1:8002/api/rooms/conversation:demo/publish

Ctrl-C stops everything.
EOF
wait
