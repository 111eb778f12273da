#!/usr/bin/env bash
# The web console's checks: the committed bundle matches its sources (console/dist), then
# the browser tests in headless Chromium against the broker binary (console/test).
#
#   scripts/browser-tests.sh            # builds the debug binary first if it is missing
#   SWITCHBOARD_BIN=path/to/switchboard scripts/browser-tests.sh
#
# Installs Debian's chromium with apt-get when /usr/bin/chromium is missing (nothing here
# downloads a browser build), runs `npm ci` in console/, and runs the tests with
# SWITCHBOARD_REQUIRE_BROWSER=1, so a missing browser or binary fails instead of skipping.
# Screenshots: target/browser-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if [ -z "${CHROMIUM_PATH:-}" ] && [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (apt-get)"
  as_root apt-get update -qq
  as_root apt-get install -y -qq chromium >/dev/null
fi
# (Debian's wrapper script prints a harmless shell warning on some machines.)
"${CHROMIUM_PATH:-/usr/bin/chromium}" --version 2>/dev/null

if ! command -v npm >/dev/null; then
  echo "== installing nodejs and npm (apt-get)"
  as_root apt-get update -qq
  as_root apt-get install -y -qq nodejs npm >/dev/null
fi

bin=${SWITCHBOARD_BIN:-$root/target/debug/switchboard}
if [ ! -x "$bin" ] && [ -z "${SWITCHBOARD_BIN:-}" ]; then
  echo "== cargo build --bin switchboard"
  cargo build --bin switchboard
fi

cd console
npm ci --no-audit --no-fund --loglevel=error
echo "== console/dist matches its sources"
npm run --silent check
echo "== browser tests (headless chromium, broker $bin)"
SWITCHBOARD_REQUIRE_BROWSER=1 SWITCHBOARD_BIN="$bin" npm test
