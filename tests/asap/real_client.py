"""The real asap-protocol client against a running switchboard broker.

Usage: python real_client.py <broker base URL, e.g. http://127.0.0.1:8000>

The broker must run with `[asap] echo_skill = true` and accept anonymous ASAP calls. Each
check prints `ok <name>` or `FAIL <name>: <why>`; the exit status is the number of
failures. Driven by tests/asap_python.rs.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time
import traceback

import brotli
import httpx
import websockets

from asap.errors import RemoteRPCError
from asap.models.envelope import Envelope
from asap.models.payloads import TaskRequest
from asap.transport.client import ASAPClient

BASE = sys.argv[1].rstrip("/")
WS = BASE.replace("http://", "ws://", 1) + "/asap/ws"
BROKER = "urn:asap:agent:switchboard"
CLIENT = "urn:asap:agent:test-client"
FAILURES: list[str] = []


def task(skill: str = "echo", sender: str = CLIENT, recipient: str = BROKER, **input_) -> Envelope:
    return Envelope(
        asap_version="0.1",
        sender=sender,
        recipient=recipient,
        payload_type="task.request",
        payload=TaskRequest(conversation_id="conv-1", skill_id=skill, input=input_).model_dump(),
    )


def check(name: str, condition: bool, detail: str = "") -> None:
    if condition:
        print(f"ok {name}")
    else:
        FAILURES.append(name)
        print(f"FAIL {name}: {detail}")


async def round_trips() -> None:
    for mode in ("websocket", "http"):
        async with ASAPClient(BASE, transport_mode=mode) as client:
            request = task(q=mode)
            answer = await client.send(request)
            check(
                f"{mode}: echo round trip",
                answer.payload_type == "task.response"
                and answer.correlation_id == request.id
                and answer.payload_dict["result"]["echoed"] == {"q": mode}
                and answer.payload_dict["status"] == "completed",
                repr(answer),
            )
            if mode == "websocket":
                pending = client._ws_transport._pending_acks  # noqa: SLF001 — what the client resends
                check("websocket: every requires_ack envelope was acknowledged", not pending, repr(pending))


async def concurrent_requests() -> None:
    async with ASAPClient(BASE, transport_mode="websocket") as client:
        requests = [task(n=i) for i in range(50)]
        answers = await asyncio.gather(*(client.send(r) for r in requests))
        check(
            "websocket: 50 concurrent requests on one connection, each answered to its caller",
            all(a.correlation_id == r.id and a.payload_dict["result"]["echoed"] == {"n": i}
                for i, (r, a) in enumerate(zip(requests, answers))),
        )


async def pushes_reach_on_message() -> None:
    got: list[Envelope] = []
    async with ASAPClient(BASE, transport_mode="websocket", on_message=got.append) as client:
        request = Envelope(
            asap_version="0.1", sender=CLIENT, recipient=BROKER, payload_type="task.request",
            payload=TaskRequest(conversation_id="c", skill_id="echo", input={"x": 1},
                                config={"streaming": True}).model_dump(),
        )
        answer = await client.send(request)
        # The push was sent before the answer on the same socket, so it has been read.
        check(
            "websocket: a handler's later message reaches on_message",
            [e.payload_type for e in got] == ["task.update"]
            and got[0].correlation_id == request.id
            and answer.payload_type == "task.response",
            repr(got),
        )


async def errors_keep_the_connection() -> None:
    async with ASAPClient(BASE, transport_mode="websocket") as client:
        unknown = Envelope(asap_version="0.1", sender=CLIENT, recipient=BROKER,
                           payload_type="com.example.unknown", payload={})
        try:
            await client.send(unknown)
            check("websocket: unknown payload type is an error", False, "no error")
        except RemoteRPCError as err:
            check("websocket: unknown payload type answered with -32012 handler_not_found",
                  err.json_rpc_code == -32012 and err.code == "asap:transport/handler_not_found",
                  f"{err.json_rpc_code} {err.code}")
        answer = await client.send(task(after="error"))
        check("websocket: the connection is usable after an error",
              answer.payload_dict["result"]["echoed"] == {"after": "error"})
        # No agent serves the recipient and no handler the payload type.
        offline = Envelope(asap_version="0.1", sender=CLIENT, recipient="urn:asap:agent:nobody-here",
                           payload_type="com.example.note", payload={"text": "hi"})
        start = time.monotonic()
        try:
            await client.send(offline)
            check("websocket: an offline recipient is an error", False, "no error")
        except RemoteRPCError as err:
            check("websocket: an offline recipient is -32032 at once",
                  err.json_rpc_code == -32032 and time.monotonic() - start < 5,
                  f"{err.json_rpc_code} after {time.monotonic() - start:.1f}s")


async def raw_frames() -> None:
    async with websockets.connect(WS) as ws:
        request = task(raw=True).model_dump(mode="json")
        request["requires_ack"] = True
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "asap.send",
                                  "params": {"envelope": request}, "id": "r1"}))
        first = json.loads(await ws.recv())
        second = json.loads(await ws.recv())
        check("raw: asap.ack (MessageAck) comes before the result",
              first.get("method") == "asap.ack"
              and first["params"]["envelope"]["payload"]["original_envelope_id"] == request["id"]
              and second.get("id") == "r1" and "result" in second,
              f"{first} / {second}")
        await ws.send("{not json")
        error = json.loads(await ws.recv())
        check("raw: a malformed frame gets -32700", error["error"]["code"] == -32700, repr(error))
        await ws.send(json.dumps({"type": "ping"}))
        check("raw: an application ping gets a pong", json.loads(await ws.recv()) == {"type": "pong"})
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "asap.send",
                                  "params": {"envelope": request}, "id": 7}))
        frames = [json.loads(await ws.recv()) for _ in range(2)]
        check("raw: the connection still answers after a bad frame",
              any(f.get("id") == 7 and "result" in f for f in frames), repr(frames))


async def agent_to_agent() -> None:
    """Agent B serves urn:asap:agent:b on the real client; A reaches it through the broker."""
    agent_b = "urn:asap:agent:b"
    holder: dict[str, ASAPClient] = {}

    replies: set[asyncio.Task[Envelope]] = set()

    def serve(envelope: Envelope) -> None:
        # The client's receive loop waits for on_message to return, and the reply's own
        # answer arrives through that loop: so reply from a task, not inline.
        if envelope.payload_type != "task.request":
            return
        reply = Envelope(
            asap_version="0.1", sender=agent_b, recipient=envelope.sender,
            payload_type="task.response", correlation_id=envelope.id,
            payload={"task_id": "t-b", "status": "completed",
                     "result": {"from": "b", "input": envelope.payload_dict["input"]}},
        )
        replies.add(asyncio.create_task(holder["b"].send(reply)))

    async with ASAPClient(BASE, transport_mode="websocket", on_message=serve) as b:
        holder["b"] = b
        # Sending once makes the connection the route to its sender (asap.learn_senders).
        await b.send(task(sender=agent_b))
        for mode in ("websocket", "http"):
            async with ASAPClient(BASE, transport_mode=mode) as a:
                request = task(sender="urn:asap:agent:a", recipient=agent_b, via=mode)
                answer = await a.send(request)
                check(f"{mode}: agent-to-agent request reaches B and B's reply comes back",
                      answer.sender == agent_b and answer.correlation_id == request.id
                      and answer.payload_dict["result"] == {"from": "b", "input": {"via": mode}},
                      repr(answer))


async def http_specifics() -> None:
    envelope = task(pad="x" * 4096).model_dump(mode="json")
    body = json.dumps({"jsonrpc": "2.0", "method": "asap.send",
                       "params": {"envelope": envelope}, "id": "c1"}).encode()
    async with httpx.AsyncClient(base_url=BASE) as http:
        for name, encoded in (("br", brotli.compress(body)), ("gzip", gzip.compress(body))):
            r = await http.post("/asap", content=encoded,
                                headers={"Content-Encoding": name, "Content-Type": "application/json"})
            data = r.json()
            check(f"http: a {name}-compressed 4 KiB envelope is read",
                  data.get("result", {}).get("envelope", {}).get("payload", {})
                  .get("result", {}).get("echoed", {}).get("pad") == "x" * 4096,
                  repr(data)[:200])
        r = await http.post("/asap", content=body, headers={"ASAP-Version": "2.1, 2.2"})
        check("http: ASAP-Version negotiated and echoed", r.headers.get("asap-version") == "2.1")
        r = await http.post("/asap", content=body, headers={"ASAP-Version": "9.9"})
        check("http: an unknown ASAP-Version is -32000", r.json()["error"]["code"] == -32000)
        key = {"X-Idempotency-Key": f"key-{time.time()}"}
        first = await http.post("/asap", content=body, headers=key)
        again = await http.post("/asap", content=body, headers=key)
        check("http: a retried request with the same X-Idempotency-Key gets the same answer",
              first.json() == again.json() and "result" in first.json())
        manifest = await http.get("/.well-known/asap/manifest.json")
        etag = manifest.headers.get("etag")
        cached = await http.get("/.well-known/asap/manifest.json", headers={"If-None-Match": etag})
        check("http: manifest has ETag and Cache-Control, and answers 304 to its ETag",
              manifest.status_code == 200 and etag and cached.status_code == 304
              and "max-age" in manifest.headers.get("cache-control", "")
              and any(s["id"] == "echo" for s in manifest.json()["capabilities"]["skills"]))
    async with ASAPClient(BASE, transport_mode="http") as client:
        requests = [task(b=i) for i in range(3)]
        answers = await client.batch(requests)
        check("http: a JSON-RPC batch answers each request",
              [a.correlation_id for a in answers] == [r.id for r in requests])
        big = task(pad="y" * 4096)
        answer = await client.send(big)
        check("http: the client's own compressed 4 KiB send round-trips",
              answer.payload_dict["result"]["echoed"]["pad"] == "y" * 4096)
        streaming = Envelope(
            asap_version="0.1", sender=CLIENT, recipient=BROKER, payload_type="task.request",
            payload=TaskRequest(conversation_id="c", skill_id="echo", input={"s": 1},
                                config={"streaming": True}).model_dump(),
        )
        events = [e async for e in client.stream(streaming)]
        check("http: /asap/stream sends the later message, then the answer",
              [e.payload_type for e in events] == ["task.update", "task.response"], repr(events))


async def main() -> int:
    for case in (round_trips, concurrent_requests, pushes_reach_on_message,
                 errors_keep_the_connection, raw_frames, agent_to_agent, http_specifics):
        try:
            await asyncio.wait_for(case(), timeout=60)
        except Exception:  # noqa: BLE001 — report and go on to the next case
            FAILURES.append(case.__name__)
            print(f"FAIL {case.__name__}: {traceback.format_exc()}")
    print(f"{len(FAILURES)} failed" if FAILURES else "all passed")
    return len(FAILURES)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
