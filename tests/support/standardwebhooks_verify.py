#!/usr/bin/env python3
"""Runs the Standard Webhooks reference library (PyPI `standardwebhooks`) for
tests/webhook_signing.rs, so our signatures are checked by code other than our own.

Reads one JSON request on stdin and writes one JSON answer on stdout:

  {"op": "verify", "secret": "whsec_...", "headers": {...}, "body": "..."}
      -> {"ok": true} or {"ok": false, "error": "..."}
  {"op": "sign", "secret": "whsec_...", "msg_id": "...", "timestamp": 1700000000, "body": "..."}
      -> {"signature": "v1,..."}
  {"op": "version"} -> {"version": "1.1.0"}

Exit status 77 (with "SKIP: ..." on stderr) when the package cannot be imported; the test
then skips. Install it with `python3 -m pip install standardwebhooks`.
"""

import json
import sys
from datetime import datetime, timezone

try:
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError
except ImportError as exc:  # pragma: no cover - depends on the environment
    print(
        f"SKIP: the Standard Webhooks reference library is not importable ({exc}); "
        "install it with `python3 -m pip install standardwebhooks`",
        file=sys.stderr,
    )
    sys.exit(77)


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("standardwebhooks")
    except Exception:  # pragma: no cover
        return "unknown"


def main() -> None:
    req = json.load(sys.stdin)
    op = req["op"]
    if op == "version":
        out = {"version": package_version()}
    elif op == "verify":
        wh = Webhook(req["secret"])
        try:
            wh.verify(req["body"].encode("utf-8"), req["headers"], json_parse=False)
            out = {"ok": True}
        except WebhookVerificationError as exc:
            out = {"ok": False, "error": str(exc)}
    elif op == "sign":
        wh = Webhook(req["secret"])
        ts = datetime.fromtimestamp(int(req["timestamp"]), tz=timezone.utc)
        out = {"signature": wh.sign(req["msg_id"], ts, req["body"])}
    else:
        raise SystemExit(f"unknown op {op!r}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
