import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { PollingClient } from "../../src/polling.js";
import type { FetchLike } from "../../src/polling.js";
import type { Envelope } from "../../src/protocol.js";
import { defineStatusElement, describeStatus } from "../../src/status-element.js";
import { memoryStorage } from "../../src/storage.js";
import type { RecoveryEvent } from "../../src/subscription.js";

const settle = () => vi.advanceTimersByTimeAsync(0);

/** The history route of one room, as the broker answers it, with `kept` the oldest seq still stored. */
function historyApi(state: { seq: number; kept: number }, requests: string[]): FetchLike {
  return async (url) => {
    requests.push(url);
    const since = Number(new URL(url).searchParams.get("since"));
    const limit = Number(new URL(url).searchParams.get("limit"));
    const messages: Envelope[] = [];
    for (let seq = Math.max(since + 1, state.kept); seq <= state.seq && messages.length < limit; seq++) {
      messages.push({ type: "room.message", id: `m${seq}`, room: "chat:1", seq, payload: seq });
    }
    const recovered = since <= state.seq && (since + 1 >= state.kept || state.seq === since);
    return { ok: true, status: 200, json: async () => ({ room: "chat:1", seq: state.seq, recovered, messages }) };
  };
}

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("polling fallback", () => {
  it("starts live, then delivers new seqs once per poll and reports a gap history no longer holds", async () => {
    const state = { seq: 4, kept: 1 };
    const requests: string[] = [];
    const client = new PollingClient({ baseUrl: "http://b.test", credential: "key", intervalMs: 1_000, fetch: historyApi(state, requests), storage: memoryStorage(), logger: "silent" });
    const sub = client.subscribe("chat:1");
    const got: number[] = [];
    sub.on("message", (m) => got.push(m.seq));
    const lost: RecoveryEvent[] = [];
    client.on("recovery", (e) => lost.push(e));
    await client.connect();
    await expect(sub.ready).resolves.toEqual({ room: "chat:1", seq: 4, recovered: true });
    expect(got).toEqual([]);
    state.seq = 6;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(got).toEqual([5, 6]);
    expect(requests.at(-1)).toBe("http://b.test/api/rooms/chat%3A1/history?since=4&limit=1000");
    await vi.advanceTimersByTimeAsync(1_000);
    expect(got).toEqual([5, 6]);
    // 7..9 published, but only 9 is still kept when the next poll comes.
    state.seq = 9;
    state.kept = 9;
    await vi.advanceTimersByTimeAsync(1_000);
    expect(got).toEqual([5, 6, 9]);
    expect(lost).toEqual([{ room: "chat:1", recovered: false, reset: false, sinceSeq: 6, seq: 9 }]);
    client.disconnect();
  });

  it("backs off after failed polls and stops for good on 401", async () => {
    let calls = 0;
    const fetch: FetchLike = async () => {
      calls += 1;
      if (calls === 1) throw new Error("ECONNREFUSED");
      return { ok: false, status: 401, json: async () => ({ error: { code: "unauthorized", message: "unknown API key or invalid token" } }) };
    };
    const client = new PollingClient({ baseUrl: "http://b.test", credential: "bad", fetch, storage: memoryStorage(), logger: "silent", reconnect: { initialDelayMs: 100 }, random: () => 0 });
    client.subscribe("chat:1");
    const states: string[] = [];
    client.on("state", ({ to }) => states.push(to));
    await client.connect();
    expect(client.state).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(100);
    await settle();
    expect(states).toEqual(["connecting", "reconnecting", "closed"]);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(calls).toBe(2);
  });
});

describe("<switchboard-status>", () => {
  it("describes each state, with the countdown to the next attempt", () => {
    expect(describeStatus("connected", undefined, 0)).toBe("connected");
    expect(describeStatus("reconnecting", 10_500, 7_000)).toBe("reconnecting in 4 s");
    expect(describeStatus("reconnecting", 1_000, 2_000)).toBe("reconnecting");
    expect(describeStatus("closed", undefined, 0)).toBe("offline");
    expect(describeStatus("idle", undefined, 0)).toBe("offline");
    expect(describeStatus("paused", undefined, 0)).toBe("paused");
  });

  it("is registered only where custom elements exist", () => {
    expect(defineStatusElement()).toBe(false);
    const defined = new Map<string, unknown>();
    class FakeElement {
      attributes = new Map<string, string>();
      textContent = "";
      isConnected = true;
      setAttribute(name: string, value: string) {
        this.attributes.set(name, value);
      }
    }
    const g = globalThis as Record<string, unknown>;
    g.HTMLElement = FakeElement;
    g.customElements = { get: (name: string) => defined.get(name), define: (name: string, ctor: unknown) => defined.set(name, ctor) };
    try {
      expect(defineStatusElement()).toBe(true);
      const Element = defined.get("switchboard-status") as new () => FakeElement & { client: unknown; connectedCallback(): void; disconnectedCallback(): void };
      const element = new Element();
      const listeners: Record<string, (value: unknown) => void> = {};
      const source = { state: "reconnecting", on: (event: string, fn: (value: unknown) => void) => ((listeners[event] = fn), () => undefined) };
      element.client = source;
      listeners.reconnecting({ attempt: 1, delayMs: 3_000, at: Date.now() + 3_000 });
      expect(element.textContent).toBe("reconnecting in 3 s");
      expect(element.attributes.get("state")).toBe("reconnecting");
      source.state = "connected";
      listeners.state({ to: "connected" });
      expect(element.textContent).toBe("connected");
      element.disconnectedCallback();
    } finally {
      delete g.HTMLElement;
      delete g.customElements;
    }
  });
});
