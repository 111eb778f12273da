import type { BackoffOptions, ResolvedBackoff } from "./backoff.js";
import { backoffDelay, resolveBackoff } from "./backoff.js";
import type { TokenSource } from "./client.js";
import { ClientCore } from "./core.js";
import type { Logger, LogLevel } from "./logger.js";
import { resolveLogger } from "./logger.js";
import type { Envelope } from "./protocol.js";
import { SwitchboardError } from "./protocol.js";
import type { KeyValueStorage } from "./storage.js";
import { defaultStorage, ResumeStore } from "./storage.js";

export type FetchLike = (url: string, init?: { method?: string; headers?: Record<string, string>; body?: string }) => Promise<{
  ok: boolean;
  status: number;
  json(): Promise<unknown>;
}>;

export interface PollingClientOptions {
  /** `http://` or `https://` base of the broker, e.g. `https://chat.example.com`. */
  baseUrl: string;
  /**
   * A credential the HTTP API accepts: an API key from `[api] keys` or an admin token.
   * User tokens are refused by the history route, so this fallback is for trusted code.
   */
  credential: TokenSource;
  /** Time between polls of each room (default 2000 ms). */
  intervalMs?: number;
  /** Backoff after failed polls, as for the WebSocket client. */
  reconnect?: BackoffOptions;
  fetch?: FetchLike;
  storage?: KeyValueStorage;
  storageKey?: string;
  logger?: Logger | LogLevel;
  random?: () => number;
}

interface HistoryResponse {
  seq: number;
  recovered: boolean;
  messages: Envelope[];
}

/**
 * The same client surface over the HTTP API, for places without WebSockets: each room's
 * history is polled from its last seq (`GET /api/rooms/{room}/history?since=N`) and
 * publishes go through `POST /api/rooms/{room}/publish`. Answers are turned into the
 * protocol's frames (`room.joined`, `room.message`, `ack`, `system.error`), so delivery
 * keeps the exactly-once, in-order rules and `recovered: false` reports.
 */
export class PollingClient extends ClientCore {
  private readonly options: PollingClientOptions;
  private readonly backoff: ResolvedBackoff;
  private readonly fetcher: FetchLike;
  private readonly random: () => number;
  /** Rooms whose next poll is a join: the first answer is reported as `room.joined`. */
  private readonly joining = new Map<string, number | undefined>();
  private running = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private failures = 0;

  constructor(options: PollingClientOptions) {
    super(
      new ResumeStore(options.storage ?? defaultStorage(), options.storageKey ?? `switchboard:${options.baseUrl}`),
      resolveLogger(options.logger),
      30_000,
      Number.POSITIVE_INFINITY,
    );
    this.options = options;
    this.backoff = resolveBackoff(options.reconnect);
    const globalFetch = (globalThis as { fetch?: FetchLike }).fetch;
    if (!options.fetch && !globalFetch) {
      throw new SwitchboardError("unavailable", "no fetch implementation: pass one as options.fetch");
    }
    // Browsers' fetch must be called as a plain function (with `this` the global object):
    // called as a method of this client it throws "Illegal invocation".
    this.fetcher = options.fetch ?? ((url, init) => (globalFetch as FetchLike)(url, init));
    this.random = options.random ?? Math.random;
  }

  protected get transportUp(): boolean {
    return this.running;
  }

  protected transmit(frame: Envelope): void {
    switch (frame.type) {
      case "room.join":
        this.joining.set(frame.room ?? "", (frame.payload as { since_seq?: number } | undefined)?.since_seq);
        break;
      case "room.leave":
        this.joining.delete(frame.room ?? "");
        break;
      case "room.publish":
        void this.publishOverHttp(frame);
        break;
      default:
        // Application requests need a socket; answer them as the broker would refuse them.
        if (frame.id) {
          queueMicrotask(() =>
            this.receive({
              type: "system.error",
              correlation_id: frame.id,
              payload: { code: "unavailable", message: `${frame.type} needs a WebSocket connection` },
            }),
          );
        }
    }
  }

  /** Starts polling; resolves after the first round succeeded. */
  async connect(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.setState("connecting");
    this.rejoinAll();
    this.flushPending();
    await this.pollOnce();
  }

  disconnect(): void {
    this.running = false;
    clearTimeout(this.timer);
    this.failEverything(new SwitchboardError("closed", "the client was disconnected"));
    this.setState("closed");
  }

  private async pollOnce(): Promise<void> {
    if (!this.running) return;
    try {
      const rooms = new Set([...this.rooms.subscribedRooms(), ...this.joining.keys()]);
      await Promise.all([...rooms].map((room) => this.pollRoom(room)));
      this.failures = 0;
      this.setState("connected");
      this.schedule(this.options.intervalMs ?? 2_000);
    } catch (err) {
      if (!this.running) return;
      const error = err instanceof SwitchboardError ? err : new SwitchboardError("unavailable", String(err));
      if (error.code === "unauthorized" || error.code === "forbidden") {
        this.running = false;
        this.failEverything(error);
        this.events.emit("error", error);
        this.setState("closed", { reason: error.message });
        return;
      }
      this.failures += 1;
      if (this.failures > this.backoff.maxAttempts) {
        this.disconnect();
        return;
      }
      const delayMs = backoffDelay(this.failures, this.backoff, this.random);
      this.setState("reconnecting", { reason: error.message });
      this.events.emit("reconnecting", { attempt: this.failures, delayMs, at: Date.now() + delayMs });
      this.schedule(delayMs);
    }
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.pollOnce(), delayMs);
  }

  private async pollRoom(room: string): Promise<void> {
    const joining = this.joining.has(room);
    const since = joining ? this.joining.get(room) : this.rooms.lastSeq(room);
    const query = since === undefined ? "since=0&limit=1" : `since=${since}&limit=1000`;
    const history = (await this.call("GET", `/api/rooms/${encodeURIComponent(room)}/history?${query}`)) as HistoryResponse;
    if (!this.running) return;
    if (joining) {
      this.joining.delete(room);
      // A join without since_seq is live-only: its seq is the starting point.
      this.receive({ type: "room.joined", room, seq: history.seq, payload: { recovered: since === undefined || history.recovered } });
      if (since === undefined) return;
    } else if (!history.recovered || (since !== undefined && history.seq < since)) {
      // Same report a socket rejoin would give: part of the gap is gone, or the room reset.
      this.receive({ type: "room.joined", room, seq: history.seq, payload: { recovered: false } });
      if (this.joining.has(room)) return;
    }
    for (const message of history.messages) this.receive(message);
  }

  private async publishOverHttp(frame: Envelope): Promise<void> {
    const room = frame.room ?? "";
    try {
      const body = JSON.stringify({ payload: frame.payload ?? null, id: frame.id });
      const ack = (await this.call("POST", `/api/rooms/${encodeURIComponent(room)}/publish`, body)) as {
        seq: number;
        id: string;
        duplicate: boolean;
      };
      this.receive({ type: "ack", correlation_id: frame.id, room, seq: ack.seq, payload: { id: ack.id, duplicate: ack.duplicate } });
    } catch (err) {
      const error = err instanceof SwitchboardError ? err : new SwitchboardError("unavailable", String(err));
      // A network failure leaves the publish pending: it is sent again, same id, on the next connect.
      if (error.code === "unavailable") return;
      this.receive({ type: "system.error", correlation_id: frame.id, payload: { code: error.code, message: error.message } });
    }
  }

  private async call(method: string, path: string, body?: string): Promise<unknown> {
    const credential = typeof this.options.credential === "function" ? await this.options.credential() : this.options.credential;
    const headers: Record<string, string> = { authorization: `Bearer ${credential}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let response: Awaited<ReturnType<FetchLike>>;
    try {
      response = await this.fetcher(`${this.options.baseUrl.replace(/\/$/, "")}${path}`, { method, headers, body });
    } catch (err) {
      throw new SwitchboardError("unavailable", `${method} ${path}: ${String(err)}`);
    }
    const json = (await response.json().catch(() => undefined)) as { error?: { code: string; message: string } } | undefined;
    if (!response.ok) {
      const code = json?.error?.code ?? (response.status >= 500 ? "unavailable" : "bad_request");
      throw new SwitchboardError(code, json?.error?.message ?? `${method} ${path} answered ${response.status}`);
    }
    return json;
  }
}
