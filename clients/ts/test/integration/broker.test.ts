import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { WebSocketClient } from "../../src/client.js";
import type { SocketConstructor } from "../../src/client.js";
import { PollingClient } from "../../src/polling.js";
import type { RoomMessage } from "../../src/protocol.js";
import { memoryStorage } from "../../src/storage.js";
import type { RecoveryEvent } from "../../src/subscription.js";
import { TaskClient } from "../../src/tasks.js";
import type { TaskEvent } from "../../src/tasks.js";
import { API_KEY, Broker, brokerAvailable, waitFor } from "./broker.js";

/** The `ws` package's WebSocket, remembering each socket so a test can cut one abruptly. */
const opened: WebSocket[] = [];
class TrackedWebSocket extends WebSocket {
  constructor(url: string, protocols?: string | string[]) {
    super(url, protocols);
    opened.push(this);
  }
}
const Ctor = TrackedWebSocket as unknown as SocketConstructor;

let n = 0;
const uniqueRoom = (prefix = "conversation") => `${prefix}:${Date.now().toString(36)}-${++n}`;

describe.runIf(brokerAvailable())("against the real broker", () => {
  let broker: Broker;
  const clients: Array<{ disconnect(): void }> = [];

  function client(sub: string, rooms: string[], extra: Partial<ConstructorParameters<typeof WebSocketClient>[0]> = {}) {
    const made = new WebSocketClient({
      url: broker.ws,
      token: () => broker.token(sub, rooms),
      WebSocket: Ctor,
      storage: memoryStorage(),
      logger: "silent",
      reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
      ...extra,
    });
    clients.push(made);
    return made;
  }

  function collect(messages: RoomMessage[]) {
    return (m: RoomMessage) => messages.push(m);
  }

  beforeAll(async () => {
    broker = await Broker.start();
  });

  afterAll(async () => {
    for (const c of clients) c.disconnect();
    await broker?.close();
  });

  it("connects, subscribes, publishes with an ack and receives its own and others' messages", async () => {
    const room = uniqueRoom();
    const alice = client("alice", ["conversation:*"]);
    const bob = client("bob", ["conversation:*"]);
    await Promise.all([alice.connect(), bob.connect()]);
    expect(alice.user).toBe("alice");
    expect(alice.connectionId).toMatch(/^[0-9a-f-]{36}$/);
    const aliceSub = alice.subscribe(room);
    const bobSub = bob.subscribe(room);
    await expect(aliceSub.ready).resolves.toEqual({ room, seq: 0, recovered: true });
    await bobSub.ready;
    const bobGot: RoomMessage[] = [];
    bobSub.on("message", collect(bobGot));
    const first = await alice.publish(room, { text: "one" }, { id: "m-one" });
    expect(first).toEqual({ id: "m-one", room, seq: 1, duplicate: false });
    // The same id again is acknowledged with the original seq and not delivered twice.
    await expect(alice.publish(room, { text: "one" }, { id: "m-one" })).resolves.toMatchObject({ seq: 1, duplicate: true });
    await expect(alice.publish(room, { text: "two" })).resolves.toMatchObject({ seq: 2, duplicate: false });
    await waitFor("bob's two messages", () => bobGot.length >= 2);
    expect(bobGot.map((m) => [m.seq, m.payload])).toEqual([
      [1, { text: "one" }],
      [2, { text: "two" }],
    ]);
    expect(aliceSub.lastSeq).toBe(2);
  });

  it("reports a refused room and a refused publish with the broker's codes", async () => {
    const alice = client("alice", ["conversation:*"]);
    await alice.connect();
    const sub = alice.subscribe("secret:1");
    await expect(sub.ready).rejects.toMatchObject({ code: "forbidden" });
    await expect(alice.publish(uniqueRoom(), 1)).rejects.toMatchObject({ code: "bad_request" });
    await expect(alice.request("no.such.handler", {}, { timeoutMs: 5_000 })).rejects.toMatchObject({ code: "unknown_type" });
  });

  it("after an abrupt client-side drop, resumes and sees every message exactly once, in order", async () => {
    const room = uniqueRoom();
    const reader = client("reader", ["conversation:*"]);
    const writer = client("writer", ["conversation:*"]);
    await Promise.all([reader.connect(), writer.connect()]);
    const sub = reader.subscribe(room);
    await sub.ready;
    writer.subscribe(room);
    const got: RoomMessage[] = [];
    sub.on("message", collect(got));
    const resumed: unknown[] = [];
    reader.on("resumed", (p) => resumed.push(p));
    const oldConnection = reader.connectionId;

    for (let i = 1; i <= 5; i++) await writer.publish(room, { i });
    await waitFor("the first five", () => got.length === 5);

    // Cut the TCP connection without a close frame, as a network drop would.
    const readerSocket = socketOf(reader);
    expect(opened).toContain(readerSocket);
    readerSocket.terminate();
    await waitFor("the reader to notice the drop", () => reader.state === "reconnecting");
    // While it is away: the broker keeps its rooms, and history keeps these.
    for (let i = 6; i <= 10; i++) await writer.publish(room, { i });
    // A publish the reader makes while offline is sent after the resume, once.
    const offlineAck = reader.publish(room, { i: 11 }, { id: "reader-offline-1" });

    await waitFor("reconnected", () => reader.state === "connected");
    await expect(offlineAck).resolves.toMatchObject({ seq: 11, duplicate: false });
    for (let i = 12; i <= 13; i++) await writer.publish(room, { i });
    await waitFor("all thirteen", () => got.length >= 13);
    expect(got.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    expect(got.map((m) => (m.payload as { i: number }).i)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    expect(reader.connectionId).not.toBe(oldConnection);
    // The broker batches frames for this client (the replay above came through it).
    expect(socketOf(reader).protocol).toBe("switchboard.v1.batch");
    // And compresses them: Node's `ws` offers permessage-deflate, the test broker accepts.
    expect(socketOf(reader).extensions).toContain("permessage-deflate");
    expect(resumed).toHaveLength(1);
    expect(resumed[0]).toMatchObject({ previous_connection_id: oldConnection, rooms: { [room]: { recovered: true } } });
    expect(sub.recovered).toBe(true);
  });

  it("receives HTTP-published messages, custom types included, through the subscription and the bus", async () => {
    const room = uniqueRoom();
    const alice = client("alice", ["conversation:*"]);
    await alice.connect();
    const sub = alice.subscribe(room);
    await sub.ready;
    const updates: string[] = [];
    alice.bus.on("task.*", (f) => updates.push(`${f.type}#${f.seq}`));
    const iterated: RoomMessage[] = [];
    const loop = (async () => {
      for await (const message of sub) {
        iterated.push(message);
        if (iterated.length === 2) break;
      }
    })();
    expect((await broker.api("POST", `/api/rooms/${room}/publish`, { payload: { text: "deploy finished" }, id: "ord-1" })).json).toMatchObject({ seq: 1 });
    expect((await broker.api("POST", `/api/rooms/${room}/publish`, { type: "task.update", payload: { progress: 0.5 } })).status).toBe(200);
    await loop;
    expect(iterated.map((m) => [m.type, m.seq, m.payload])).toEqual([
      ["room.message", 1, { text: "deploy finished" }],
      ["task.update", 2, { progress: 0.5 }],
    ]);
    expect(updates).toEqual(["task.update#2"]);
  });

  it("does not reconnect after the broker refuses the token (4000)", async () => {
    const bad = new WebSocketClient({
      url: broker.ws,
      token: "not-a-jwt",
      WebSocket: Ctor,
      storage: memoryStorage(),
      logger: "silent",
      reconnect: { initialDelayMs: 10, maxDelayMs: 20 },
    });
    const states: string[] = [];
    bad.on("state", ({ to }) => states.push(to));
    await expect(bad.connect()).rejects.toMatchObject({ code: "unauthorized", message: "malformed token: bad header" });
    expect(states).toEqual(["connecting", "closed"]);
  });

  it("the polling fallback reads history from its last seq and publishes over HTTP", async () => {
    const room = uniqueRoom();
    await broker.api("POST", `/api/rooms/${room}/publish`, { payload: { before: true } });
    const poller = new PollingClient({ baseUrl: broker.http, credential: API_KEY, intervalMs: 50, storage: memoryStorage(), logger: "silent" });
    clients.push(poller);
    const sub = poller.subscribe(room);
    await poller.connect();
    await expect(sub.ready).resolves.toEqual({ room, seq: 1, recovered: true });
    const got: RoomMessage[] = [];
    sub.on("message", collect(got));
    await expect(poller.publish(room, { via: "poll" }, { id: "p-1" })).resolves.toMatchObject({ seq: 2, duplicate: false });
    await broker.api("POST", `/api/rooms/${room}/publish`, { payload: { n: 3 } });
    await waitFor("both messages", () => got.length >= 2);
    expect(got.map((m) => [m.seq, m.payload])).toEqual([
      [2, { via: "poll" }],
      [3, { n: 3 }],
    ]);
  });

  it("task API: submit, get, a worker's approval request, approve, watch over the socket and the long-poll", async () => {
    const aliceToken = broker.token("alice");
    const tasks = new TaskClient({ baseUrl: broker.http, token: aliceToken, WebSocket: Ctor, logger: "silent" });
    const submitted = await tasks.submit({ task: "tidy the reports", priority: "high" });
    expect(submitted.task.status).toBe("pending");
    const taskId = submitted.task.id;
    await expect(tasks.get(taskId)).resolves.toMatchObject({ task: { id: taskId, status: "pending" } });

    const socketEvents: TaskEvent[] = [];
    const watch = tasks.watch(taskId, { transport: "socket" });
    watch.on("event", (e) => socketEvents.push(e));

    // A worker on the broker's socket, using the client's request/reply.
    const worker = client("worker-1", []);
    await worker.connect();
    const claimed = await worker.request<{ task: { id: string } | null }>("task.claim", {}, { timeoutMs: 5_000 });
    expect(claimed.payload?.task?.id).toBe(taskId);
    const asked = await worker.request<{ approvalId: string }>("task.approval_request", { taskId, description: "apply changes" }, { timeoutMs: 5_000 });
    const approvalId = asked.payload?.approvalId ?? "";
    await expect(tasks.get(taskId)).resolves.toMatchObject({ task: { status: "awaiting_approval" } });
    await tasks.approve(taskId, { approvalId, approved: true, message: "go ahead" });
    await worker.request("task.complete", { taskId, result: { ok: true } }, { timeoutMs: 5_000 });

    await expect(watch.done).resolves.toBe("completed");
    const seqs = socketEvents.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(socketEvents.map((e) => e.type)).toContain("approval_request");

    // The long-poll fallback sees the same events, in the same order, from seq 0.
    const polled: TaskEvent[] = [];
    const pollWatch = tasks.watch(taskId, { transport: "poll", waitMs: 1_000 });
    pollWatch.on("event", (e) => polled.push(e));
    await expect(pollWatch.done).resolves.toBe("completed");
    expect(polled.map((e) => e.seq)).toEqual(seqs);

    // Another user's token may not read it.
    const mallory = new TaskClient({ baseUrl: broker.http, token: broker.token("mallory"), logger: "silent" });
    await expect(mallory.get(taskId)).rejects.toMatchObject({ code: "forbidden" });
  });

  // Last: it restarts the broker process.
  it("after a broker restart (1012), reconnects promptly, reports the reset and replays the new room once", async () => {
    const room = uniqueRoom();
    const reader = client("reader", ["conversation:*"]);
    await reader.connect();
    const sub = reader.subscribe(room);
    await sub.ready;
    const got: RoomMessage[] = [];
    sub.on("message", collect(got));
    const recoveries: RecoveryEvent[] = [];
    reader.on("recovery", (e) => recoveries.push(e));
    const closes: Array<number | undefined> = [];
    reader.on("state", (s) => s.to === "reconnecting" && closes.push(s.code));
    for (let i = 1; i <= 3; i++) await broker.api("POST", `/api/rooms/${room}/publish`, { payload: { old: i } });
    await waitFor("three messages", () => got.length === 3);

    await broker.restart();
    // The new process knows nothing: the room starts again at seq 1.
    for (let i = 1; i <= 2; i++) await broker.api("POST", `/api/rooms/${room}/publish`, { payload: { new: i } });
    await waitFor("reconnected", () => reader.state === "connected");
    await waitFor("the new room's messages", () => got.length >= 5);
    await broker.api("POST", `/api/rooms/${room}/publish`, { payload: { new: 3 } });
    await waitFor("a live one after", () => got.length >= 6);
    expect(closes[0]).toBe(1012);
    expect(got.map((m) => m.payload)).toEqual([{ old: 1 }, { old: 2 }, { old: 3 }, { new: 1 }, { new: 2 }, { new: 3 }]);
    expect(recoveries).toEqual([{ room, recovered: false, reset: true, sinceSeq: 3, seq: expect.any(Number) }]);
    expect(sub.recovered).toBe(false);
  });

  /** The client's current socket (private: only a test reaches in, to cut it). */
  function socketOf(c: WebSocketClient): WebSocket {
    const socket = (c as unknown as { socket?: WebSocket }).socket;
    if (!socket) throw new Error("the client has no socket");
    return socket;
  }
});
