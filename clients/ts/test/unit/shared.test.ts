import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { SharedClient } from "../../src/shared.js";
import { memoryStorage } from "../../src/storage.js";
import { MockSocket } from "./mock-socket.js";
import { FakeChannelHub, FakeLocks } from "./tab-fakes.js";

const settle = () => vi.advanceTimersByTimeAsync(0);

function tab(hub: FakeChannelHub, locks: FakeLocks) {
  return new SharedClient({
    url: "ws://broker.test/ws",
    WebSocket: MockSocket,
    channel: hub.channel(),
    locks,
    storage: memoryStorage(),
    logger: "silent",
    reconnect: { initialDelayMs: 100, maxDelayMs: 1_000 },
  });
}

beforeEach(() => {
  vi.useFakeTimers();
  MockSocket.reset();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("shared connection across tabs", () => {
  it("opens one socket for all tabs, fans frames out, and hands over when the leader's tab closes", async () => {
    const hub = new FakeChannelHub();
    const locks = new FakeLocks();
    const a = tab(hub, locks);
    const b = tab(hub, locks);
    const aReady = a.connect();
    const bReady = b.connect();
    await settle();
    expect(MockSocket.instances).toHaveLength(1);
    expect(a.isLeader).toBe(true);
    expect(b.isLeader).toBe(false);
    MockSocket.last().established("c1");
    await settle();
    await Promise.all([aReady, bReady]);
    expect(b.state).toBe("connected");
    expect(b.connectionId).toBe("c1");

    const aSub = a.subscribe("chat:1");
    const bSub = b.subscribe("chat:1");
    await settle();
    const socket = MockSocket.last();
    expect(socket.sentOfType("room.join").map((f) => f.room)).toEqual(["chat:1", "chat:1"]);
    const aGot: number[] = [];
    const bGot: number[] = [];
    aSub.on("message", (m) => aGot.push(m.seq));
    bSub.on("message", (m) => bGot.push(m.seq));
    socket.joined("chat:1", 0);
    socket.message("chat:1", 1);
    socket.message("chat:1", 2);
    await settle();
    expect(aGot).toEqual([1, 2]);
    expect(bGot).toEqual([1, 2]);

    // A follower's publish goes out on the leader's socket; the ack comes back to it.
    const ack = b.publish("chat:1", { text: "from b" }, { id: "b-1" });
    await settle();
    expect(socket.sentOfType("room.publish")).toMatchObject([{ id: "b-1", room: "chat:1" }]);
    socket.message("chat:1", 3);
    socket.deliver({ type: "ack", correlation_id: "b-1", room: "chat:1", seq: 3, payload: { id: "b-1" } });
    await settle();
    await expect(ack).resolves.toMatchObject({ seq: 3 });

    // The leader's tab is closed without a goodbye: the browser releases its lock.
    (a as unknown as { channel: { close(): void } }).channel.close();
    locks.releaseHolder();
    await settle();
    expect(b.isLeader).toBe(true);
    expect(MockSocket.instances).toHaveLength(2);
    MockSocket.last().established("c2");
    await settle();
    const rejoin = MockSocket.last().sentOfType("room.join");
    expect(rejoin).toMatchObject([{ room: "chat:1", payload: { since_seq: 3 } }]);
    MockSocket.last().joined("chat:1", 4);
    for (const seq of [3, 4]) MockSocket.last().message("chat:1", seq);
    await settle();
    expect(bGot).toEqual([1, 2, 3, 4]);
    b.disconnect();
  });

  it("keeps the room joined on the shared socket while another tab still wants it", async () => {
    const hub = new FakeChannelHub();
    const locks = new FakeLocks();
    const a = tab(hub, locks);
    const b = tab(hub, locks);
    void a.connect();
    void b.connect();
    await settle();
    MockSocket.last().established("c1");
    await settle();
    a.subscribe("chat:1");
    const bSub = b.subscribe("chat:1");
    await settle();
    a.unsubscribe("chat:1");
    await settle();
    expect(MockSocket.last().sentOfType("room.leave")).toHaveLength(0);
    bSub.unsubscribe();
    await settle();
    expect(MockSocket.last().sentOfType("room.leave")).toHaveLength(1);
  });

  it("hands the socket over on a graceful disconnect of the leader", async () => {
    const hub = new FakeChannelHub();
    const locks = new FakeLocks();
    const a = tab(hub, locks);
    const b = tab(hub, locks);
    void a.connect();
    void b.connect();
    await settle();
    MockSocket.last().established("c1");
    await settle();
    a.disconnect();
    await settle();
    expect(MockSocket.instances[0].closedWith?.code).toBe(1000);
    expect(b.isLeader).toBe(true);
    expect(MockSocket.instances).toHaveLength(2);
  });
});
