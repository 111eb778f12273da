#!/usr/bin/env python3
"""Memory of a switchboard process under the attacks of docs/SECURITY.md, measured from outside.

Starts the given `switchboard` binary on a loopback port with its own config, runs one attack,
and prints the broker's resident memory (VmRSS, and VmHWM for the peak) before, during and
after as one JSON line. Standard library only; every loop is bounded and stops by itself.

  memory_attacks.py --binary target/release/switchboard oversized
  memory_attacks.py --binary B ids --id-bytes 60000 --payload-bytes 16 --seconds 12
  memory_attacks.py --binary B api --id-bytes 60000 --rooms 10 --per-room 1000

Attacks:
  oversized  N sockets each declare a frame of --declared bytes and stream --stream bytes of
             it (stopping when the broker hangs up).
  ids        one user with --sessions sessions, each in --rooms rooms, publishes messages with
             ids of --id-bytes and payloads of --payload-bytes at --rate per session (under the
             default limit of 100/s) for --seconds; then everyone leaves and the rooms retire
             after history.ttl (--ttl): the last figure says whether the memory came back.
  api        the same through the HTTP API: --per-room messages with ids of --id-bytes to each
             of --rooms rooms.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SECRET = "memory-attack-secret-0123456789"
API_KEY = "memory-attack-api-key-0123456789"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(sub: str, rooms) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(
        json.dumps({"sub": sub, "rooms": rooms, "exp": int(time.time()) + 3600}).encode()
    )
    signing_input = f"{header}.{claims}".encode()
    sig = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(sig)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A switchboard process with a config written for this run."""

    def __init__(self, binary: str, ttl: str):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sb-memory-")
        config = os.path.join(self.dir, "switchboard.toml")
        with open(config, "w") as f:
            f.write(
                f"""[server]
bind = "127.0.0.1:{self.port}"
workers = 1
[auth]
hs256_secret = "{SECRET}"
[history]
ttl = "{ttl}"
[api]
keys = ["{API_KEY}"]
requests_per_second = 0
[webhooks]
outbox_path = ""
"""
            )
        self.log = open(os.path.join(self.dir, "broker.log"), "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config], stdout=self.log, stderr=self.log, env=env
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        raise SystemExit("the broker did not start; see " + self.log.name)

    def status(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return round(self.status("VmRSS") / 1024, 1)

    def peak_mib(self) -> float:
        return round(self.status("VmHWM") / 1024, 1)

    def rooms(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
            return json.load(r)["rooms"]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Ws:
    """A raw WebSocket client; a thread reads and discards what the broker sends."""

    def __init__(self, port: int, path: str):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit("handshake failed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit("handshake refused: " + head.decode(errors="replace"))
        self.closed = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        try:
            while self.sock.recv(1 << 16):
                pass
        except OSError:
            pass
        self.closed.set()

    @staticmethod
    def header(opcode: int, length: int) -> bytes:
        # Masked with an all-zero key: the payload goes as written.
        first = bytes([0x80 | opcode])
        if length < 126:
            return first + bytes([0x80 | length]) + b"\0\0\0\0"
        if length < 1 << 16:
            return first + bytes([0x80 | 126]) + length.to_bytes(2, "big") + b"\0\0\0\0"
        return first + bytes([0x80 | 127]) + length.to_bytes(8, "big") + b"\0\0\0\0"

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def text(self, message) -> bool:
        data = json.dumps(message).encode()
        return self.send(self.header(1, len(data)) + data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Sampler:
    """Samples the broker's RSS every 50 ms while an attack runs."""

    def __init__(self, broker: Broker):
        self.broker, self.max, self.stop_flag = broker, 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            self.max = max(self.max, self.broker.rss_mib())
            time.sleep(0.05)

    def stop(self) -> float:
        self.stop_flag.set()
        self.thread.join()
        return self.max


def oversized(broker: Broker, args) -> dict:
    chunk = b"x" * (64 * 1024)
    accepted = []

    def attack():
        ws = Ws(broker.port, "/ws?token=" + token("attacker", []))
        ws.send(Ws.header(2, args.declared))
        sent = 0
        while sent < args.stream and ws.send(chunk):
            sent += len(chunk)
        accepted.append(sent)
        ws.closed.wait(10)
        ws.close()

    threads = [threading.Thread(target=attack) for _ in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"accepted_mib_per_connection": [round(a / 2**20, 1) for a in accepted]}


def ids(broker: Broker, args) -> dict:
    rooms = [f"attack:{i}" for i in range(args.rooms)]
    sessions = [
        Ws(broker.port, "/ws?token=" + token("attacker", ["attack:*"]))
        for _ in range(args.sessions)
    ]
    for ws in sessions:
        for room in rooms:
            ws.text({"type": "room.join", "room": room})
    time.sleep(0.5)  # pacing: joins are answered before the publishes start
    payload = "p" * args.payload_bytes
    published = [0]

    def publish(n: int, ws: Ws):
        deadline = time.time() + args.seconds
        i = 0
        while time.time() < deadline and not ws.closed.is_set():
            message_id = f"{n}-{i}-".ljust(args.id_bytes, "i")
            ws.text(
                {
                    "type": "room.publish",
                    "room": rooms[i % len(rooms)],
                    "id": message_id,
                    "payload": payload,
                }
            )
            i += 1
            time.sleep(1 / args.rate)
        published[0] += i

    threads = [threading.Thread(target=publish, args=(n, ws)) for n, ws in enumerate(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ws in sessions:
        ws.close()
    return {"published": published[0]}


def api(broker: Broker, args) -> dict:
    def publish(room: str):
        for i in range(args.per_room):
            body = json.dumps(
                {"id": f"{room}-{i}-".ljust(args.id_bytes, "i"), "payload": "p" * args.payload_bytes}
            ).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{broker.port}/api/rooms/{room}/publish",
                data=body,
                headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            )
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError as e:
                statuses.add(e.code)
                return

    statuses = set()
    threads = [
        threading.Thread(target=publish, args=(f"attack:{r}",)) for r in range(args.rooms)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"refused_with": sorted(statuses)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--ttl", default="10s", help="history.ttl of the broker")
    parser.add_argument(
        "--settle", type=float, default=30, help="seconds to wait after the rooms retired"
    )
    sub = parser.add_subparsers(dest="attack", required=True)
    p = sub.add_parser("oversized")
    p.add_argument("--connections", type=int, default=3)
    p.add_argument("--declared", type=int, default=200 * 2**20)
    p.add_argument("--stream", type=int, default=200 * 2**20)
    for name in ("ids", "api"):
        p = sub.add_parser(name)
        p.add_argument("--rooms", type=int, default=4 if name == "ids" else 10)
        p.add_argument("--id-bytes", type=int, default=60_000)
        p.add_argument("--payload-bytes", type=int, default=16)
        if name == "ids":
            p.add_argument("--sessions", type=int, default=3)
            p.add_argument("--rate", type=float, default=90)
            p.add_argument("--seconds", type=float, default=12)
        else:
            p.add_argument("--per-room", type=int, default=1000)
    args = parser.parse_args()

    broker = Broker(args.binary, args.ttl)
    try:
        time.sleep(0.5)  # let start-up allocations settle before the baseline
        before = broker.rss_mib()
        sampler = Sampler(broker)
        started = time.time()
        extra = {"oversized": oversized, "ids": ids, "api": api}[args.attack](broker, args)
        peak = max(sampler.stop(), broker.rss_mib())
        result = {
            "label": args.label,
            "attack": args.attack,
            "args": {k: v for k, v in vars(args).items() if k not in ("binary", "label", "attack")},
            "rss_before_mib": before,
            "rss_peak_mib": peak,
            "rss_end_mib": broker.rss_mib(),
            "seconds": round(time.time() - started, 1),
            **extra,
        }
        if args.attack in ("ids", "api"):
            # Wait (bounded) for the rooms to retire: history.ttl after their last message.
            deadline = time.time() + 120
            while broker.rooms() > 0 and time.time() < deadline:
                time.sleep(0.5)
            time.sleep(1)
            result["rooms_left"] = broker.rooms()
            result["rss_after_rooms_retired_mib"] = broker.rss_mib()
            # An allocator may hand freed pages back gradually (jemalloc: over 10 s).
            time.sleep(args.settle)
            result[f"rss_{args.settle:g}s_later_mib"] = broker.rss_mib()
        result["vm_hwm_mib"] = broker.peak_mib()
        print(json.dumps(result), flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
