#!/usr/bin/env bash
# Holds IDLE_TOTAL idle connections (default 100,000) on this machine, spread over
# IDLE_PROCS switchboard processes (default 6), each with its own load generator, and reports
# what they cost: switchboard's RSS per connection summed over the processes, the kernel's
# slab and socket memory, heartbeats answered and connections dropped.
#
#   scripts/idle-processes.sh
#   IDLE_TOTAL=100000 IDLE_PROCS=6 IDLE_HOLD=60 IDLE_OUT=target/bench/idle100k scripts/idle-processes.sh
#
# Why several processes: a machine whose hard limit on open files per process is below the
# connection count (20,000 on the machine docs/PERFORMANCE.md was measured on, without the
# privilege to raise it) cannot hold 100,000 sockets in one process. On a machine that
# allows it, `loadgen idle --conns 100000 --source 127.0.0.2 --source 127.0.0.3 …` against one
# broker is the direct measurement; this script measures what several processes can tell:
# that the per-connection cost holds at this scale and what the kernel costs besides.
#
# Each broker runs in its own directory under the output directory (its task store and
# webhook outbox are its own), on 127.0.0.1:18100+i, pinned to core 0; the load generators
# run on core 1. Every broker is stopped by PID on exit. Output: one results.jsonl line per
# process, slab.txt (before and during the hold), and the summary printed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="$PATH:/usr/sbin:/sbin"

TOTAL=${IDLE_TOTAL:-100000}
PROCS=${IDLE_PROCS:-6}
HOLD=${IDLE_HOLD:-60}
OUT=${IDLE_OUT:-$ROOT/target/bench/idle-processes-$(date +%Y%m%d-%H%M%S)}
BASE_PORT=18100
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

log() { printf '\n\033[1m[idle] %s\033[0m\n' "$*"; }

per=$(((TOTAL + PROCS - 1) / PROCS))
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((per + 100)) ]; then
  echo "error: $per connections per process need more than the open-file limit $(ulimit -n);" \
    "raise IDLE_PROCS" >&2
  exit 2
fi

log "building switchboard and loadgen (release)"
cargo build --release --bin switchboard
cargo build --release -p loadgen
SB_BIN=$ROOT/target/release/switchboard
LG_BIN=$ROOT/target/release/loadgen

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# Kernel memory: the slab caches and the TCP buffer pages. Both ends of every connection are
# on this machine, so the growth is for 2 × TOTAL sockets.
kernel_memory() { # label
  {
    echo "== $1"
    grep -E '^(Slab|SUnreclaim|SReclaimable):' /proc/meminfo
    grep '^TCP:' /proc/net/sockstat
  } >>"$OUT/slab.txt"
  cat /proc/slabinfo >"$OUT/slabinfo-$1.txt" 2>/dev/null || true
  awk '/^Slab:/ {print $2}' /proc/meminfo
}

# TCP sockets in use, from /proc/net/sockstat: cheap to read at any count, unlike listing
# 200,000 sockets with ss.
tcp_inuse() { awk '/^TCP:/ {print $3}' /proc/net/sockstat; }

for i in $(seq 0 $((PROCS - 1))); do
  dir=$OUT/node$i
  mkdir -p "$dir"
  cat >"$dir/switchboard.toml" <<EOF
[server]
bind = "127.0.0.1:$((BASE_PORT + i))"

[auth]
anonymous = true

[heartbeat]
interval = "10s"
timeout = "30s"
EOF
  (cd "$dir" && exec taskset -c 0 "$SB_BIN" serve --config switchboard.toml >broker.log 2>&1) &
  PIDS+=($!)
done
for i in $(seq 0 $((PROCS - 1))); do
  port=$((BASE_PORT + i))
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue 2; fi
    kill -0 "${PIDS[$i]}" 2>/dev/null || { cat "$OUT/node$i/broker.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "error: broker $i did not listen on $port" >&2
  exit 1
done

slab_before=$(kernel_memory before)
inuse_before=$(tcp_inuse)
log "$PROCS brokers up; opening $TOTAL connections ($per per broker), holding ${HOLD}s"
LG_PIDS=()
left=$TOTAL
for i in $(seq 0 $((PROCS - 1))); do
  n=$((left < per ? left : per))
  left=$((left - n))
  # Each load generator connects from its own loopback address, so no two share a range of
  # ephemeral ports.
  taskset -c 1 "$LG_BIN" --target switchboard --url "ws://127.0.0.1:$((BASE_PORT + i))/ws" \
    --source "127.0.0.$((2 + i))" \
    --broker-pid "${PIDS[$i]}" --label "idle-proc$i" --json-out "$RESULTS" \
    idle --conns "$n" --rooms 100 --hold "$HOLD" >"$OUT/loadgen$i.log" 2>&1 &
  LG_PIDS+=($!)
done
# The kernel's figure is read once every connection is open (both ends of each are counted
# in the machine's TCP sockets), or when a load generator has ended early.
lg_running() { for pid in "${LG_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || return 1; done; }
while lg_running && [ $(($(tcp_inuse) - inuse_before)) -lt $((2 * TOTAL)) ]; do
  sleep 0.5
done
sockets=$(($(tcp_inuse) - inuse_before))
log "$((sockets / 2)) connections open"
slab_during=$(kernel_memory during)
failed=0
for pid in "${LG_PIDS[@]}"; do wait "$pid" || failed=1; done
cat "$OUT"/loadgen*.log

python3 - "$RESULTS" "$TOTAL" "$slab_before" "$slab_during" "$OUT" "$sockets" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
total = int(sys.argv[2])
slab = (int(sys.argv[4]) - int(sys.argv[3])) * 1024
sockets = max(int(sys.argv[6]), 1)  # TCP sockets opened, both ends
conns = sum(r.get("connected", 0) for r in rows)
alive = sum(r.get("alive", 0) for r in rows)
pings = sum(r.get("pings", 0) for r in rows)
base = sum(r.get("broker_rss_base_kib", 0) for r in rows)
held = sum(r.get("broker_rss_end_kib", 0) for r in rows)
cpu = sum(r.get("broker_cpu_pct", 0) for r in rows)
print(f"processes                 {len(rows)}")
print(f"connected                 {conns} of {total}")
print(f"alive after the hold      {alive}")
print(f"heartbeats answered       {pings}")
print(f"switchboard RSS           {base / 1024:.0f} MiB -> {held / 1024:.0f} MiB, "
      f"{(held - base) / max(conns, 1):.2f} KiB per connection")
print(f"broker CPU while held     {cpu:.1f} % of a core, all processes")
print(f"kernel slab growth        {slab / 2**20:.0f} MiB, "
      f"{slab / sockets / 1024:.2f} KiB per socket, {sockets} sockets (both ends on this machine)")

def caches(label):
    out = {}
    try:
        lines = open(f"{sys.argv[5]}/slabinfo-{label}.txt").read().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        out[f[0]] = int(f[2]) * int(f[3])  # objects allocated × object size
    return out
before, during = caches("before"), caches("during")
growth = sorted(((during[k] - before.get(k, 0), k) for k in during), reverse=True)
for grown, name in growth[:10]:
    if grown > 0:
        print(f"  {name:<24} {grown / sockets:7.0f} bytes per socket")
EOF
[ "$failed" = 0 ] || { echo "a load generator failed" >&2; exit 1; }
