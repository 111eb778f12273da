#!/usr/bin/env bash
# Makes (or refreshes) target/asap-venv: a Python >= 3.13 virtualenv with the pinned ASAP
# packages (tests/asap/requirements.txt: the asap-protocol client and asap-compliance),
# from the machine's Python 3.13 (pyenv's, or python3.13 on PATH). Prints the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

PY313=""
for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.1[3-9]*/bin/python3 \
                 "$(command -v python3.13 || true)"; do
  if [ -x "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then
    PY313="$candidate"; break
  fi
done
if [ -z "$PY313" ]; then echo "no Python >= 3.13 found (pyenv or python3.13)" >&2; exit 1; fi
"$PY313" -m venv target/asap-venv
target/asap-venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -r tests/asap/requirements.txt >&2
target/asap-venv/bin/python -c \
  'import asap, asap_compliance; print("asap-protocol", asap.__version__, "asap-compliance", asap_compliance.__version__)' 2>/dev/null >&2
echo "$PWD/target/asap-venv/bin/python"
