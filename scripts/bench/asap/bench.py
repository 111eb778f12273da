"""Round-trip latency of the real asap-protocol client (ASAPClient) against one server.

Usage: python bench.py <label> <base URL> <transport: websocket|http> <requests> <concurrency>

Sends `requests` echo task requests (after 10% as warm-up), `concurrency` in flight on one
client (one WebSocket, or one HTTP connection pool), and prints one JSON line: p50, p99,
mean (ms) and requests per second, on a line starting with `RESULT ` (the package's
logging writes to stdout too). Every answer is checked (correlation and echoed input),
so a fast wrong answer cannot pass.
"""

import asyncio
import json
import logging
import statistics
import sys
import time

import structlog

from asap.models.envelope import Envelope
from asap.models.payloads import TaskRequest
from asap.transport.client import ASAPClient

# The client logs every request at info; at these rates that is the benchmark.
logging.disable(logging.INFO)
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

label, base, transport, total, concurrency = sys.argv[1:6]
total, concurrency = int(total), int(concurrency)


def request(i: int) -> Envelope:
    return Envelope(
        asap_version="0.1",
        sender="urn:asap:agent:bench",
        recipient="urn:asap:agent:server",
        payload_type="task.request",
        payload=TaskRequest(conversation_id="bench", skill_id="echo", input={"i": i}).model_dump(),
    )


async def main() -> None:
    latencies: list[float] = []
    async with ASAPClient(base, transport_mode=transport, timeout=30) as client:

        async def phase(numbers: range, record: bool) -> float:
            queue = iter(numbers)

            async def worker() -> None:
                for i in queue:
                    envelope = request(i)
                    started = time.perf_counter()
                    answer = await client.send(envelope)
                    elapsed = time.perf_counter() - started
                    echoed = answer.payload_dict["result"]["echoed"]
                    if answer.correlation_id != envelope.id or echoed != {"i": i}:
                        raise SystemExit(f"wrong answer for {i}: {answer}")
                    if record:
                        latencies.append(elapsed)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started

        await phase(range(-max(1, total // 10), 0), record=False)
        wall = await phase(range(total), record=True)

    latencies.sort()
    print("RESULT " + json.dumps({
        "target": label,
        "transport": transport,
        "requests": len(latencies),
        "concurrency": concurrency,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "rps": round(len(latencies) / wall, 1),
    }))


asyncio.run(main())
