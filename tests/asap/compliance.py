"""The asap-compliance validators and the asap-protocol compliance harness against a broker.

Usage: python compliance.py <broker base URL>

Runs validate_handshake, validate_schema (on an envelope the broker answered),
validate_state_machine and validate_sla from asap-compliance, then the package's own
harness (asap.testing.compliance) for the categories the broker implements. Prints every
check and a JSON summary line; the exit status is the number of failed checks. The broker
must serve the `echo` skill. Driven by tests/asap_python.rs.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
from asap.testing.compliance import run_compliance_harness_v2_from_url
from asap_compliance import (
    ComplianceConfig,
    validate_handshake_async,
    validate_schema,
    validate_sla_async,
    validate_state_machine_async,
)

# The harness's "identity" category probes the Agent-JWT identity API (/asap/agent/register,
# /asap/capability/list), which the broker does not implement; see docs/ASAP.md.
HARNESS_CATEGORIES = ["streaming", "errors", "versioning", "batch", "audit"]


async def answered_envelope(base: str) -> dict:
    body = {
        "jsonrpc": "2.0",
        "method": "asap.send",
        "params": {"envelope": {
            "asap_version": "0.1",
            "sender": "urn:asap:agent:compliance-harness",
            "recipient": "urn:asap:agent:switchboard",
            "payload_type": "task.request",
            "payload": {"conversation_id": "c", "skill_id": "echo", "input": {"x": 1}},
        }},
        "id": "schema-1",
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base}/asap", json=body)
        return response.json()["result"]["envelope"]


async def main(base: str) -> int:
    config = ComplianceConfig(agent_url=base)
    summary: dict[str, str] = {}
    failed = 0
    results = [
        ("handshake", await validate_handshake_async(config)),
        ("schema", validate_schema(await answered_envelope(base))),
        ("state", await validate_state_machine_async(config)),
        ("sla", await validate_sla_async(config)),
    ]
    for name, result in results:
        for check in result.checks:
            print(f"{'ok' if check.passed else 'FAIL'} {name}.{check.name}: {check.message}")
            failed += 0 if check.passed else 1
        passed = sum(c.passed for c in result.checks)
        summary[name] = f"{passed}/{len(result.checks)}"
    report = await run_compliance_harness_v2_from_url(base, categories=HARNESS_CATEGORIES)
    for check in report.checks:
        print(f"{'ok' if check.passed else 'FAIL'} harness.{check.category}.{check.name}: {check.message}")
        failed += 0 if check.passed else 1
    summary["harness"] = report.summary
    print("summary " + json.dumps(summary))
    return failed


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1].rstrip("/"))))
