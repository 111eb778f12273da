#!/usr/bin/env bash
# The broker's memory under the attacks of docs/SECURITY.md ("Memory under attack"), for
# one or more switchboard binaries in the same run. Each attack starts a fresh broker on a
# free loopback port (scripts/security/memory_attacks.py) and reads its RSS from /proc.
#
#   scripts/bench-security.sh                            # the tree's release build
#   scripts/bench-security.sh before=/tmp/old/switchboard current
#                                                        # an older build first, same run
#   SECURITY_OUT=DIR                                     # default target/bench/security-<time>
#
# An argument is LABEL=PATH, or just `current` for the tree's release build. Output: one
# JSON line per attack in DIR/results.jsonl, echoed as it goes. About 4 minutes per binary.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${SECURITY_OUT:-target/bench/security-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
[ $# -gt 0 ] || set -- current

cargo build --release --bin switchboard
CURRENT=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/switchboard

attack() { # label binary args...
  local label=$1 binary=$2
  shift 2
  python3 scripts/security/memory_attacks.py --binary "$binary" --label "$label" "$@" |
    tee -a "$OUT/results.jsonl"
}

for spec in "$@"; do
  case $spec in
    current) label=current binary=$CURRENT ;;
    *=*) label=${spec%%=*} binary=${spec#*=} ;;
    *)
      echo "usage: $0 [LABEL=PATH | current]..." >&2
      exit 2
      ;;
  esac
  # Point 1: three sockets each declare a 200 MiB frame and stream it.
  attack "$label" "$binary" oversized
  # Point 3: long message ids, one user with three sessions in four rooms, 90 msg/s each.
  attack "$label" "$binary" ids --id-bytes 60000 --payload-bytes 16 --rooms 4
  # What stays possible within the limits: 128-byte ids, 60 KB payloads, 100 rooms.
  attack "$label" "$binary" ids --id-bytes 128 --payload-bytes 60000 --rooms 100
  # The same two through the HTTP API, 10 rooms x 1000 messages.
  attack "$label" "$binary" api --id-bytes 60000 --payload-bytes 16 --rooms 10
  attack "$label" "$binary" api --id-bytes 128 --payload-bytes 60000 --rooms 10
done
echo "results: $OUT/results.jsonl"
