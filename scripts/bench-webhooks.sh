#!/usr/bin/env bash
# Webhook benchmark (benches/webhooks.rs): HTTP publish throughput and latency without and
# with a webhook endpoint (outbox synchronous normal and full), end-to-end delivery with 1
# and 4 endpoints, and the default 10/s rate limit. Everything runs in one process on
# 127.0.0.1 (a broker, a receiver and the publishers); see docs/PERFORMANCE.md, "Webhooks".
#
#   scripts/bench-webhooks.sh                                # defaults: M = 10000, C = 16, L = 50 (~20 s)
#   scripts/bench-webhooks.sh --messages 5000 --concurrency 32 --limit-messages 50
#   BENCH_WEBHOOKS_OUT=FILE scripts/bench-webhooks.sh        # default target/bench/webhooks.txt
#
# Arguments go to the benchmark binary unchanged (`--help` lists them). It builds with the
# bench profile (= release) and writes the output, with the commit and the machine, to the
# terminal and to the output file.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${BENCH_WEBHOOKS_OUT:-$ROOT/target/bench/webhooks.txt}
mkdir -p "$(dirname "$OUT")"

# Build first, so that compiler output stays out of the results file.
cargo bench --bench webhooks --no-run

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "rustc: $(rustc --version)"
    echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
    echo "command: cargo bench --bench webhooks -- $*"
    echo
    cargo bench --bench webhooks -- "$@" 2>&1
} | tee "$OUT"
echo "written to $OUT"
