#!/usr/bin/env bash
# Autobahn|Testsuite conformance run against switchboard's echo route.
#
# Builds the broker (the debug build, see AUTOBAHN_PROFILE), starts it on a free loopback port with `[conformance] echo_path = "/echo"`,
# runs the Autobahn fuzzingclient against ws://127.0.0.1:PORT/echo, prints a per-group summary
# and exits non-zero if any case is FAILED or NON-STRICT or its close behaviour is not OK.
# The broker offers permessage-deflate; its groups (12.* and 13.*) take minutes and run only
# with AUTOBAHN_DEFLATE=1.
# (Cases 7.1.6, 7.13.1 and 7.13.2 grade their close behaviour INFORMATIONAL by design: the spec
# leaves the outcome open. That is counted in its own column and is not a failure.)
#
# autobahntestsuite runs only on Python 2.7. The script needs a Python 2.7 interpreter
# (~/.pyenv/versions/2.7.*/bin/python or python2.7 on PATH) and python3; without Python 2.7 it
# says so and exits 0. Python environments live under target/ and are reused:
#   target/autobahn-tools  Python 3 venv holding virtualenv<20.22 (the last that makes py2 envs)
#   target/autobahn-venv   Python 2.7 virtualenv with the pinned autobahntestsuite
# Reports: target/autobahn/reports (index.html, index.json, one file per case).
#
# Environment: AUTOBAHN_CASES (default "*"), e.g. AUTOBAHN_CASES="7.*" to run one group;
# AUTOBAHN_PROFILE (default "debug", the build `cargo test` leaves behind) or "release";
# AUTOBAHN_DEFLATE=1 adds the permessage-deflate groups 12.* and 13.*.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)

TARGET="$ROOT/target"
TOOLS="$TARGET/autobahn-tools"
VENV="$TARGET/autobahn-venv"
OUT="$TARGET/autobahn"
CASES="${AUTOBAHN_CASES:-*}"
DEFLATE_CASES="${AUTOBAHN_DEFLATE:-0}"

log() { printf 'autobahn: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- Python 2.7 -------------------------------------------------------------------------------
works_py27() {
    [ -n "$1" ] && [ -x "$1" ] &&
        "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' >/dev/null 2>&1
}
PY27=""
for cand in "$HOME"/.pyenv/versions/2.7.*/bin/python; do
    if works_py27 "$cand"; then
        PY27="$cand"
    fi
done
if [ -z "$PY27" ] && command -v python2.7 >/dev/null 2>&1 && works_py27 "$(command -v python2.7)"; then
    PY27="$(command -v python2.7)"
fi
if [ -z "$PY27" ]; then
    log "SKIPPED: no Python 2.7 interpreter found (looked for ~/.pyenv/versions/2.7.*/bin/python"
    log "and python2.7 on PATH); autobahntestsuite runs only on Python 2.7."
    exit 0
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed (virtualenv and report parsing)"

REQS=""
for cand in "$ROOT/scripts/autobahn-requirements-py27.txt" \
    "$ROOT/../shared/conformance/requirements-py27.txt"; do
    if [ -f "$cand" ]; then
        REQS="$cand"
        break
    fi
done
[ -n "$REQS" ] || die "no requirements file (scripts/autobahn-requirements-py27.txt)"

# --- Python environments (reused when they work) ----------------------------------------------
mkdir -p "$TARGET"
if ! "$TOOLS/bin/virtualenv" --version >/dev/null 2>&1; then
    log "creating $TOOLS with virtualenv<20.22"
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q 'virtualenv<20.22'
fi

STAMP="$VENV/.requirements"
venv_ok() {
    [ -x "$VENV/bin/wstest" ] &&
        cmp -s "$REQS" "$STAMP" &&
        "$VENV/bin/python" -c 'import autobahntestsuite, autobahn, twisted' >/dev/null 2>&1
}
if ! venv_ok; then
    log "creating $VENV (Python 2.7 from $PY27) from $(basename "$REQS")"
    rm -rf "$VENV"
    "$TOOLS/bin/virtualenv" -q -p "$PY27" "$VENV"
    PYTHONWARNINGS=ignore "$VENV/bin/pip" install -q --no-python-version-warning -r "$REQS"
    cp "$REQS" "$STAMP"
    venv_ok || die "the Python 2.7 environment in $VENV does not import autobahntestsuite"
fi
ABVERSION=$("$VENV/bin/python" -c 'import autobahntestsuite; print(autobahntestsuite.__version__)')

# --- Broker -----------------------------------------------------------------------------------
# The debug build by default: CI has just built it for `cargo test`, and a second (release)
# build of the whole tree would cost more than the whole run. It is built the way the tests
# build it (`cargo test --no-run`: dev-dependencies' features unified in), so after
# `cargo test` nothing is compiled again. AUTOBAHN_PROFILE=release tests the optimised binary.
PROFILE="${AUTOBAHN_PROFILE:-debug}"
log "building switchboard ($PROFILE)"
case "$PROFILE" in
    debug) cargo test --no-run --quiet ;;
    release) cargo build --release --quiet --bin switchboard ;;
    *) die "AUTOBAHN_PROFILE must be debug or release, not $PROFILE" ;;
esac
BIN="$TARGET/$PROFILE/switchboard"
[ -x "$BIN" ] || die "$BIN was not built"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-autobahn.XXXXXX")
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        # Graceful shutdown is bounded by the broker; give it up to 5 s, then force.
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')

CONFIG="$WORK/switchboard.toml"
cat >"$CONFIG" <<EOF
[server]
bind = "127.0.0.1:$PORT"
shutdown_timeout = "2s"

permessage_deflate = true

[auth]
anonymous = true

[conformance]
echo_path = "/echo"
# The 9.* cases send messages of up to 16 MiB. The echo route uses only this limit
# (not limits.max_frame_bytes) for frames and reassembled messages.
echo_max_message_bytes = 16777216
EOF

rm -rf "$OUT"
mkdir -p "$OUT"
log "starting switchboard on 127.0.0.1:$PORT (log: target/autobahn/server.log)"
RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --config "$CONFIG" >"$OUT/server.log" 2>&1 &
SERVER_PID=$!

ready=""
for _ in $(seq 1 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || {
        cat "$OUT/server.log" >&2
        die "switchboard exited during startup"
    }
    if curl -fsS --max-time 1 "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
[ -n "$ready" ] || die "switchboard did not answer /healthz within 10 s"

# --- Fuzzing client ---------------------------------------------------------------------------
SPEC="$WORK/fuzzingclient.json"
python3 - "$SPEC" "$PORT" "$OUT/reports" "$CASES" "$DEFLATE_CASES" <<'EOF'
import json, sys
spec, port, outdir, cases, deflate = sys.argv[1:]
json.dump({
    "outdir": outdir,
    "servers": [{"agent": "switchboard", "url": "ws://127.0.0.1:%s/echo" % port}],
    "cases": [c.strip() for c in cases.split(",")],
    # The permessage-deflate groups (RFC 7692) run when asked for: they take minutes.
    "exclude-cases": [] if deflate == "1" else ["12.*", "13.*"],
    "exclude-agent-cases": {},
}, open(spec, "w"), indent=2)
EOF

log "running autobahntestsuite $ABVERSION fuzzingclient against ws://127.0.0.1:$PORT/echo"
wstest_rc=0
(cd "$WORK" && timeout 900 "$VENV/bin/wstest" -m fuzzingclient -s "$SPEC") \
    >"$OUT/wstest.log" 2>&1 || wstest_rc=$?
if [ "$wstest_rc" -ne 0 ]; then
    tail -n 30 "$OUT/wstest.log" >&2
    die "wstest exited with status $wstest_rc (log: target/autobahn/wstest.log)"
fi
kill -0 "$SERVER_PID" 2>/dev/null || die "switchboard died during the run (target/autobahn/server.log)"

# --- Report -----------------------------------------------------------------------------------
report_rc=0
python3 - "$OUT/reports/index.json" <<'EOF' || report_rc=$?
import json, sys

with open(sys.argv[1]) as f:
    index = json.load(f)
if len(index) != 1:
    sys.exit("expected one agent in %s, found %r" % (sys.argv[1], list(index)))
agent, cases = next(iter(index.items()))

def key(case_id):
    return tuple(int(p) for p in case_id.split("."))

kinds = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
groups = {}
bad = []
notable = []
for case_id in sorted(cases, key=key):
    r = cases[case_id]
    g = groups.setdefault(case_id.split(".")[0],
                          dict.fromkeys(kinds + ["close-info", "close-bad", "cases"], 0))
    g["cases"] += 1
    behavior, close = r.get("behavior"), r.get("behaviorClose")
    if behavior in kinds:
        g[behavior] += 1
    else:
        bad.append((case_id, "unknown behavior %r" % behavior))
    # An INFORMATIONAL case may grade its close INFORMATIONAL too (7.1.6, 7.13.*): no verdict.
    close_info = close == "INFORMATIONAL" and behavior == "INFORMATIONAL"
    if close_info:
        g["close-info"] += 1
    elif close != "OK":
        g["close-bad"] += 1
    # NON-STRICT counts too: every case is strict today, keep it so.
    if behavior in ("FAILED", "NON-STRICT") or (close != "OK" and not close_info):
        bad.append((case_id, "behavior %s, close %s, remote close code %s (%s)" % (
            behavior, close, r.get("remoteCloseCode"), r.get("reportfile"))))
    elif behavior != "OK" or close != "OK":
        notable.append((case_id, "%s, close %s" % (behavior, close), r.get("reportfile")))

header = ["group", "cases"] + kinds + ["close INFORMATIONAL", "close not OK"]
rows = [[name, g["cases"]] + [g[k] for k in kinds] + [g["close-info"], g["close-bad"]]
        for name, g in sorted(groups.items(), key=lambda kv: int(kv[0]))]
total = ["total", sum(r[1] for r in rows)] + [sum(r[i] for r in rows) for i in range(2, len(header))]
widths = [max(len(str(x)) for x in col) for col in zip(header, *(rows + [total]))]
line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
deflate_ran = "12" in groups or "13" in groups
print("Autobahn|Testsuite results for %s%s" % (agent, "" if deflate_ran else " (12.* and 13.* excluded)"))
print(line(header))
for r in rows:
    print(line(r))
print(line(total))
for case_id, behavior, report in notable:
    print("note: %s is %s (%s)" % (case_id, behavior, report))
for case_id, why in bad:
    print("FAIL: %s: %s" % (case_id, why))
sys.exit(1 if bad else 0)
EOF

log "reports: target/autobahn/reports/index.html; took $(($(date +%s) - START)) s"
if [ "$report_rc" -ne 0 ]; then
    die "conformance run has failures (see above)"
fi
log "PASS"
