import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { backoffDelay, resolveBackoff } from "../../src/backoff.js";
import { WebSocketClient } from "../../src/client.js";
import type { ClientOptions } from "../../src/client.js";
import type { ConnectionState, ReconnectScheduled } from "../../src/core.js";
import type { RoomMessage } from "../../src/protocol.js";
import { memoryStorage } from "../../src/storage.js";
import type { RecoveryEvent } from "../../src/subscription.js";
import { MockSocket } from "./mock-socket.js";

/** Lets promise callbacks and due timers run. */
const settle = () => vi.advanceTimersByTimeAsync(0);

function makeClient(options: Partial<ClientOptions> = {}) {
  const client = new WebSocketClient({
    url: "ws://broker.test/ws",
    WebSocket: MockSocket,
    storage: memoryStorage(),
    logger: "silent",
    reconnect: { initialDelayMs: 100, maxDelayMs: 1_000, jitter: 0.5 },
    ...options,
  });
  const states: ConnectionState[] = [];
  client.on("state", ({ to }) => states.push(to));
  return { client, states };
}

async function connected(options: Partial<ClientOptions> = {}, connectionId = "c1") {
  const made = makeClient(options);
  const ready = made.client.connect();
  await settle();
  MockSocket.last().established(connectionId);
  await ready;
  return made;
}

beforeEach(() => {
  vi.useFakeTimers();
  MockSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("connection state machine", () => {
  it("goes idle → connecting → connected → reconnecting → connected → closed, one event per change", async () => {
    const { client, states } = makeClient();
    expect(client.state).toBe("idle");
    const ready = client.connect();
    await settle();
    expect(MockSocket.last().url).toBe("ws://broker.test/ws");
    expect(MockSocket.last().protocols).toEqual(["switchboard.v1.batch", "switchboard.v1"]);
    MockSocket.last().established("c1");
    await ready;
    expect(client.connectionId).toBe("c1");
    MockSocket.last().drop(1006);
    expect(client.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(100);
    expect(MockSocket.instances).toHaveLength(2);
    MockSocket.last().established("c2");
    client.disconnect();
    expect(states).toEqual(["connecting", "connected", "reconnecting", "connected", "closed"]);
    expect(MockSocket.last().closedWith?.code).toBe(1000);
  });

  it("passes the token in the query string and asks a token function again on every attempt", async () => {
    let issued = 0;
    const { client } = makeClient({ token: async () => `tok ${++issued}` });
    void client.connect();
    await settle();
    expect(MockSocket.last().url).toBe("ws://broker.test/ws?token=tok%201");
    MockSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(100);
    expect(MockSocket.last().url).toBe("ws://broker.test/ws?token=tok%202");
  });

  it("answers the broker's system.ping with system.pong", async () => {
    await connected();
    MockSocket.last().deliver({ type: "system.ping", id: "p" });
    expect(MockSocket.last().sentOfType("system.pong")).toHaveLength(1);
  });

  it("replaces a connection that stopped carrying frames (no heartbeat)", async () => {
    const { client } = await connected();
    const first = MockSocket.last();
    await vi.advanceTimersByTimeAsync(2 * 30_000 + 5_000);
    expect(first.closedWith).toBeDefined();
    expect(client.state).toBe("reconnecting");
  });
});

describe("backoff", () => {
  it("doubles from the initial delay up to the cap, jittered within [base × (1 − jitter), base]", () => {
    const options = resolveBackoff({ initialDelayMs: 100, maxDelayMs: 1_000, jitter: 0.5 });
    const bases = [100, 200, 400, 800, 1_000, 1_000];
    bases.forEach((base, i) => {
      expect(backoffDelay(i + 1, options, () => 0)).toBe(base);
      expect(backoffDelay(i + 1, options, () => 0.999999)).toBe(Math.round(base * 0.5));
      for (let n = 0; n < 50; n++) {
        const delay = backoffDelay(i + 1, options);
        expect(delay).toBeGreaterThanOrEqual(base * 0.5);
        expect(delay).toBeLessThanOrEqual(base);
      }
    });
  });

  it("rejects a jitter outside 0..1", () => {
    expect(() => resolveBackoff({ jitter: 1.5 })).toThrow(RangeError);
  });

  it("schedules retries with growing jittered delays and gives up after maxAttempts", async () => {
    const { client, states } = makeClient({ reconnect: { initialDelayMs: 100, maxDelayMs: 1_000, maxAttempts: 3, jitter: 0.5 }, random: () => 0.5 });
    const scheduled: ReconnectScheduled[] = [];
    client.on("reconnecting", (event) => scheduled.push(event));
    const ready = client.connect();
    ready.catch(() => undefined);
    await settle();
    for (let i = 0; i < 4; i++) {
      MockSocket.last().drop(1006);
      await vi.advanceTimersByTimeAsync(1_000);
    }
    expect(scheduled.map((s) => s.delayMs)).toEqual([75, 150, 300]);
    expect(states.at(-1)).toBe("closed");
    await expect(ready).rejects.toMatchObject({ code: "unavailable" });
    expect(MockSocket.instances).toHaveLength(4);
  });

  it("reconnects promptly after 1012 even when earlier failures grew the backoff", async () => {
    const { client } = await connected({ random: () => 0 });
    const delays: number[] = [];
    client.on("reconnecting", (event) => delays.push(event.delayMs));
    for (let i = 0; i < 3; i++) {
      MockSocket.last().drop(1006);
      await vi.advanceTimersByTimeAsync(1_000);
    }
    MockSocket.last().established("c2");
    MockSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    MockSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(1_000);
    MockSocket.last().drop(1012, "server_shutdown");
    expect(delays).toEqual([100, 200, 400, 100, 200, 100]);
  });
});

describe("permanent refusals", () => {
  for (const code of [4000, 1008]) {
    it(`does not reconnect after ${code}`, async () => {
      const { client, states } = await connected();
      const errors: string[] = [];
      client.on("error", (err) => errors.push(err.code));
      MockSocket.last().drop(code, "refused");
      await vi.advanceTimersByTimeAsync(60_000);
      expect(MockSocket.instances).toHaveLength(1);
      expect(states.at(-1)).toBe("closed");
      expect(errors).toHaveLength(1);
    });
  }

  it("retries 4000 once with a fresh token from a token function, then stops", async () => {
    const { client } = makeClient({ token: () => "expired" });
    const ready = client.connect();
    ready.catch(() => undefined);
    await settle();
    MockSocket.last().drop(4000, "token expired");
    await settle();
    expect(MockSocket.instances).toHaveLength(2);
    MockSocket.last().drop(4000, "token expired");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(MockSocket.instances).toHaveLength(2);
    await expect(ready).rejects.toMatchObject({ code: "unauthorized", message: "token expired" });
  });

  it("reconnects after 4009 (slow consumer): resume recovers what was dropped", async () => {
    const { client } = await connected();
    MockSocket.last().drop(4009, "slow consumer");
    expect(client.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(100);
    expect(MockSocket.instances).toHaveLength(2);
  });
});

describe("rooms, resume and exactly-once delivery", () => {
  it("joins live, then resumes with the old connection id and each room's last seq", async () => {
    const { client } = await connected();
    const sub = client.subscribe("chat:1");
    const join = MockSocket.last().sentOfType("room.join")[0];
    expect(join).toMatchObject({ room: "chat:1" });
    expect(join.payload).toBeUndefined();
    MockSocket.last().joined("chat:1", 5, true, join.id);
    await expect(sub.ready).resolves.toEqual({ room: "chat:1", seq: 5, recovered: true });
    MockSocket.last().message("chat:1", 6);
    MockSocket.last().message("chat:1", 7);
    MockSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(100);
    MockSocket.last().established("c2");
    expect(MockSocket.last().sent[0]).toMatchObject({
      type: "system.connection.resume",
      payload: { connection_id: "c1", rooms: { "chat:1": 7 } },
    });
    expect(client.connectionId).toBe("c2");
  });

  it("lists a room joined while empty with since 0, so nothing published during a drop is missed", async () => {
    const { client } = await connected();
    client.subscribe("chat:1");
    MockSocket.last().joined("chat:1", 0);
    MockSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(100);
    MockSocket.last().established("c2");
    expect(MockSocket.last().sent[0].payload).toMatchObject({ rooms: { "chat:1": 0 } });
  });

  it("delivers each seq once and in order across a replay that repeats messages", async () => {
    const { client } = await connected();
    const sub = client.subscribe("chat:1");
    const got: number[] = [];
    sub.on("message", (m) => got.push(m.seq));
    const busSeqs: number[] = [];
    client.bus.on("room.message", (f) => busSeqs.push(f.seq ?? -1));
    const socket = MockSocket.last();
    socket.joined("chat:1", 0);
    socket.message("chat:1", 1);
    socket.message("chat:1", 2);
    socket.drop(1006);
    await vi.advanceTimersByTimeAsync(100);
    const next = MockSocket.last();
    next.established("c2");
    next.joined("chat:1", 4);
    for (const seq of [1, 2, 3, 4, 2]) next.message("chat:1", seq);
    next.message("chat:1", 5);
    expect(got).toEqual([1, 2, 3, 4, 5]);
    expect(busSeqs).toEqual([1, 2, 3, 4, 5]);
    expect(sub.lastSeq).toBe(5);
  });

  it("reads every envelope of a batched frame, in order", async () => {
    const { client } = await connected();
    const sub = client.subscribe("chat:1");
    const got: number[] = [];
    sub.on("message", (m) => got.push(m.seq));
    const socket = MockSocket.last();
    socket.joined("chat:1", 0);
    socket.deliverBatch([1, 2, 3].map((seq) => ({ type: "room.message", id: `m${seq}`, room: "chat:1", seq, payload: seq })));
    socket.deliverBatch([{ type: "system.ping", id: "p" }]);
    expect(got).toEqual([1, 2, 3]);
    expect(socket.sentOfType("system.pong")).toHaveLength(1);
  });

  it("surfaces recovered: false on the client, the subscription and its field", async () => {
    const { client } = await connected();
    const sub = client.subscribe("chat:1", { sinceSeq: 3 });
    expect(MockSocket.last().sentOfType("room.join")[0].payload).toEqual({ since_seq: 3 });
    const clientEvents: RecoveryEvent[] = [];
    const subEvents: RecoveryEvent[] = [];
    client.on("recovery", (e) => clientEvents.push(e));
    sub.on("recovery", (e) => subEvents.push(e));
    MockSocket.last().joined("chat:1", 150, false);
    const expected = { room: "chat:1", recovered: false, reset: false, sinceSeq: 3, seq: 150 };
    expect(clientEvents).toEqual([expected]);
    expect(subEvents).toEqual([expected]);
    expect(sub.recovered).toBe(false);
  });

  it("detects a room that restarted its numbering, reports it and replays the new room from 0", async () => {
    const { client } = await connected();
    const sub = client.subscribe("chat:1");
    const got: number[] = [];
    sub.on("message", (m) => got.push(m.seq));
    const events: RecoveryEvent[] = [];
    client.on("recovery", (e) => events.push(e));
    let socket = MockSocket.last();
    socket.joined("chat:1", 0);
    for (const seq of [1, 2, 3, 4, 5]) socket.message("chat:1", seq);
    socket.drop(1012, "server_shutdown");
    await vi.advanceTimersByTimeAsync(100);
    socket = MockSocket.last();
    socket.established("c2");
    // The new broker process: the room starts again, two messages already published.
    socket.joined("chat:1", 2, false);
    socket.message("chat:1", 3); // live, arrives before the replay from 0 is answered: dropped here, replayed below
    expect(events).toEqual([{ room: "chat:1", recovered: false, reset: true, sinceSeq: 5, seq: 2 }]);
    const rejoin = socket.sentOfType("room.join").at(-1);
    expect(rejoin).toMatchObject({ room: "chat:1", payload: { since_seq: 0 } });
    socket.joined("chat:1", 3, true, rejoin?.id);
    for (const seq of [1, 2, 3]) socket.message("chat:1", seq);
    socket.message("chat:1", 4);
    expect(got).toEqual([1, 2, 3, 4, 5, 1, 2, 3, 4]);
    expect(sub.recovered).toBe(false);
  });

  it("survives a reload: a new client on the same storage resumes and replays from the stored seq", async () => {
    const storage = memoryStorage();
    const first = await connected({ storage });
    first.client.subscribe("chat:1");
    MockSocket.last().joined("chat:1", 0);
    MockSocket.last().message("chat:1", 1);
    MockSocket.last().message("chat:1", 2);
    // The page goes away without a goodbye; a new page starts.
    MockSocket.reset();
    const second = makeClient({ storage });
    void second.client.connect();
    await settle();
    MockSocket.last().established("c9");
    expect(MockSocket.last().sent[0]).toMatchObject({
      type: "system.connection.resume",
      payload: { connection_id: "c1", rooms: { "chat:1": 2 } },
    });
    // Messages of a room the page has not subscribed to again are not counted as seen…
    MockSocket.last().message("chat:1", 3);
    const sub = second.client.subscribe("chat:1");
    // …so subscribing asks for them again.
    expect(MockSocket.last().sentOfType("room.join")[0].payload).toEqual({ since_seq: 2 });
    const got: number[] = [];
    sub.on("message", (m) => got.push(m.seq));
    MockSocket.last().joined("chat:1", 3);
    MockSocket.last().message("chat:1", 3);
    expect(got).toEqual([3]);
  });

  it("fails a subscription the broker refuses, and its ready promise", async () => {
    const { client } = await connected();
    const sub = client.subscribe("secret:1");
    const join = MockSocket.last().sentOfType("room.join")[0];
    MockSocket.last().deliver({ type: "system.error", correlation_id: join.id, payload: { code: "forbidden", message: "not allowed to join `secret:1`" } });
    await expect(sub.ready).rejects.toMatchObject({ code: "forbidden" });
    expect(sub.active).toBe(false);
  });

  it("streams messages with for await, and unsubscribe ends the loop and leaves the room", async () => {
    const { client } = await connected();
    const sub = client.subscribe<{ n: number }>("chat:1");
    MockSocket.last().joined("chat:1", 0);
    const seen: RoomMessage<{ n: number }>[] = [];
    const loop = (async () => {
      for await (const message of sub) seen.push(message);
    })();
    MockSocket.last().message("chat:1", 1);
    MockSocket.last().message("chat:1", 2);
    await settle();
    sub.unsubscribe();
    await loop;
    expect(seen.map((m) => m.payload?.n)).toEqual([1, 2]);
    expect(MockSocket.last().sentOfType("room.leave")).toHaveLength(1);
  });
});

describe("publish and request", () => {
  it("resolves a publish on its ack, with the seq", async () => {
    const { client } = await connected();
    const ack = client.publish("chat:1", { text: "hi" }, { id: "m-1" });
    expect(MockSocket.last().sentOfType("room.publish")[0]).toEqual({ type: "room.publish", id: "m-1", room: "chat:1", payload: { text: "hi" } });
    MockSocket.last().deliver({ type: "ack", correlation_id: "m-1", room: "chat:1", seq: 9, payload: { id: "m-1" } });
    await expect(ack).resolves.toEqual({ id: "m-1", room: "chat:1", seq: 9, duplicate: false });
  });

  it("resends an unacknowledged publish with the same id behind the resume after a drop", async () => {
    const { client } = await connected();
    const ack = client.publish("chat:1", "x");
    const id = MockSocket.last().sentOfType("room.publish")[0].id;
    MockSocket.last().drop(1006);
    await vi.advanceTimersByTimeAsync(100);
    MockSocket.last().established("c2");
    const types = MockSocket.last().sent.map((f) => f.type);
    expect(types).toEqual(["system.connection.resume", "room.publish"]);
    expect(MockSocket.last().sent[1].id).toBe(id);
    MockSocket.last().deliver({ type: "ack", correlation_id: id, room: "chat:1", seq: 4, payload: { id, duplicate: true } });
    await expect(ack).resolves.toMatchObject({ seq: 4, duplicate: true });
  });

  it("refuses a frame larger than the broker accepts instead of getting the socket closed", async () => {
    const { client } = await connected({ maxFrameBytes: 100 });
    await expect(client.publish("chat:1", "x".repeat(200))).rejects.toMatchObject({ code: "too_large" });
    expect(MockSocket.last().sentOfType("room.publish")).toHaveLength(0);
  });

  it("correlates a request's reply by id, and rejects on system.error", async () => {
    const { client } = await connected();
    const reply = client.request("task.request", { a: 1 });
    const sent = MockSocket.last().sentOfType("task.request")[0];
    MockSocket.last().deliver({ type: "task.response", correlation_id: "someone-else", payload: 0 });
    MockSocket.last().deliver({ type: "task.response", correlation_id: sent.id, payload: { ok: true } });
    await expect(reply).resolves.toMatchObject({ type: "task.response", payload: { ok: true } });
    const refused = client.request("nope.x");
    const id = MockSocket.last().sentOfType("nope.x")[0].id;
    MockSocket.last().deliver({ type: "system.error", correlation_id: id, payload: { code: "unknown_type", message: "no handler" } });
    await expect(refused).rejects.toMatchObject({ code: "unknown_type" });
  });

  it("rejects a request with timeout when no reply comes in time", async () => {
    const { client } = await connected();
    const reply = client.request("slow.thing", null, { timeoutMs: 500 });
    const assertion = expect(reply).rejects.toMatchObject({ code: "timeout" });
    await vi.advanceTimersByTimeAsync(499);
    let settled = false;
    reply.catch(() => (settled = true));
    await settle();
    expect(settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await assertion;
  });

  it("fails a request that was in flight when the connection dropped", async () => {
    const { client } = await connected();
    const reply = client.request("task.request");
    MockSocket.last().drop(1006);
    await expect(reply).rejects.toMatchObject({ code: "connection_lost" });
  });

  it("rejects what is pending when the client is disconnected", async () => {
    const { client } = await connected();
    const ack = client.publish("chat:1", 1);
    const sub = client.subscribe("chat:1");
    client.disconnect();
    await expect(ack).rejects.toMatchObject({ code: "closed" });
    expect(sub.active).toBe(false);
  });
});

describe("message bus on the client", () => {
  it("routes frames to wildcard handlers, including automatic rooms nobody subscribed to", async () => {
    const { client } = await connected();
    const tasks: string[] = [];
    const all: string[] = [];
    client.bus.on("task.*", (f) => tasks.push(f.type));
    client.bus.on("*", (f) => all.push(f.type));
    MockSocket.last().deliver({ type: "task.update", id: "u1", room: "user:alice", seq: 1, payload: {} });
    MockSocket.last().deliver({ type: "presence.join", id: "p", room: "chat:1", payload: { user: "bob" } });
    expect(tasks).toEqual(["task.update"]);
    expect(all).toEqual(["task.update", "presence.join"]);
  });
});
