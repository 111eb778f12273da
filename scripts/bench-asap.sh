#!/usr/bin/env bash
# ASAP round trips measured with the real asap-protocol client (ASAPClient, through
# scripts/bench/asap/bench.py): switchboard's /asap/ws and POST /asap against the package's
# own server (create_app with the package's echo handler, on uvicorn), with the same client
# and the same requests, in alternating rounds of one run.
#
#   scripts/bench-asap.sh                   # 3 rounds of 2000 requests per case
#   BENCH_ROUNDS=1 BENCH_REQUESTS=300 scripts/bench-asap.sh    # a smoke run
#   BENCH_SWITCHBOARD_BIN=PATH              # this switchboard binary (default: release build)
#   BENCH_OUT=DIR                           # results (default target/bench/asap-<time>)
#
# Both servers run pinned to core 0, the client to core 1; both with their per-connection
# rate limits lifted. Cases: WebSocket one request at a time, WebSocket 16 in flight on one
# connection, HTTP one at a time. Output: results.jsonl (one line per case and round) and
# table.md (medians over the rounds), printed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${BENCH_ROUNDS:-3}
REQUESTS=${BENCH_REQUESTS:-2000}
OUT=${BENCH_OUT:-$ROOT/target/bench/asap-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SB_PORT=18400
REF_PORT=18401

PY=$(scripts/asap-venv.sh)
BIN=${BENCH_SWITCHBOARD_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=$ROOT/target/release/switchboard
fi

cat >"$OUT/switchboard.toml" <<TOML
[server]
bind = "127.0.0.1:$SB_PORT"
[auth]
anonymous = true
[router]
allow_anonymous = true
[limits]
messages_per_second = 1000000
burst = 1000000
[api]
requests_per_second = 0
[webhooks]
outbox_path = ""
[asap]
echo_skill = true
TOML

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_http() { # url: up to 10 s
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not up: $1" >&2; exit 1
}

taskset -c 0 "$BIN" --config "$OUT/switchboard.toml" >"$OUT/switchboard.log" 2>&1 &
PIDS+=($!)
taskset -c 0 "$PY" scripts/bench/asap/reference_server.py "$REF_PORT" >"$OUT/reference.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SB_PORT/.well-known/asap/health"
wait_http "http://127.0.0.1:$REF_PORT/.well-known/asap/health"

"$PY" -c 'import asap, sys; print("asap-protocol", asap.__version__, "python", sys.version.split()[0])' \
  2>/dev/null >"$OUT/versions.txt"
"$BIN" --version >>"$OUT/versions.txt" 2>/dev/null || true

for round in $(seq "$ROUNDS"); do
  for target in switchboard reference; do
    port=$SB_PORT; [ "$target" = reference ] && port=$REF_PORT
    for case in "websocket 1" "websocket 16" "http 1"; do
      read -r transport concurrency <<<"$case"
      echo "round $round: $target $transport x$concurrency" >&2
      taskset -c 1 "$PY" scripts/bench/asap/bench.py "$target" "http://127.0.0.1:$port" \
        "$transport" "$REQUESTS" "$concurrency" >"$OUT/client-last.log" 2>>"$OUT/client.log"
      grep '^RESULT ' "$OUT/client-last.log" | cut -c8- | tee -a "$OUT/results.jsonl"
    done
  done
done

"$PY" - "$OUT/results.jsonl" >"$OUT/table.md" <<'PYTHON'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cases = sorted({(r["transport"], r["concurrency"]) for r in rows}, key=lambda c: (c[0] != "websocket", c[1]))
med = lambda target, case, key: statistics.median(
    r[key] for r in rows if r["target"] == target and (r["transport"], r["concurrency"]) == case)
print("| case | server | p50 ms | p99 ms | requests/s |")
print("|---|---|---:|---:|---:|")
for case in cases:
    for target in ("switchboard", "reference"):
        print(f"| {case[0]} x{case[1]} | {target} | {med(target, case, 'p50_ms'):.3f} | "
              f"{med(target, case, 'p99_ms'):.3f} | {med(target, case, 'rps'):.0f} |")
    ratio = med("switchboard", case, "p99_ms") / med("reference", case, "p99_ms")
    print(f"| {case[0]} x{case[1]} | p99 switchboard / reference | | {ratio:.2f} | |")
PYTHON
cat "$OUT/table.md"
echo "results in $OUT" >&2
