import type { BackoffOptions, ResolvedBackoff } from "./backoff.js";
import { backoffDelay, resolveBackoff } from "./backoff.js";
import { ClientCore } from "./core.js";
import { newId } from "./ids.js";
import type { Logger, LogLevel } from "./logger.js";
import { resolveLogger } from "./logger.js";
import type { Envelope, EstablishedPayload } from "./protocol.js";
import { CloseCode, PERMANENT_CLOSE_CODES, SwitchboardError } from "./protocol.js";
import type { KeyValueStorage } from "./storage.js";
import { defaultStorage, ResumeStore } from "./storage.js";

/** The subprotocols offered, batched frames first: a broker without batching answers with
 * plain v1. */
const SUBPROTOCOLS = ["switchboard.v1.batch", "switchboard.v1"];

/** The subset of the WebSocket API the client uses; browsers' and the `ws` package's fit. */
export interface SocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export type SocketConstructor = new (url: string, protocols?: string | string[]) => SocketLike;

/** A token, or a function that returns a fresh one (called before every connection attempt). */
export type TokenSource = string | (() => string | Promise<string>);

export interface ClientOptions {
  /** `ws://` or `wss://` URL of the endpoint, e.g. `wss://chat.example.com/ws`. */
  url: string;
  /** Sent as `?token=`; omit for anonymous sessions (dev mode). */
  token?: TokenSource;
  /** The WebSocket constructor; default `globalThis.WebSocket`. */
  WebSocket?: SocketConstructor;
  /** Backoff between reconnection attempts, or `false` to never reconnect. */
  reconnect?: BackoffOptions | false;
  /** Where the connection id and last seqs live across reloads; default sessionStorage, else memory. */
  storage?: KeyValueStorage;
  /** Storage key (default `switchboard:<url>`). */
  storageKey?: string;
  /** Close the socket while the document is hidden (state `paused`), resume when visible. */
  pauseWhenHidden?: boolean;
  /** Default timeout of {@link ClientCore.request} (default 30 000 ms). */
  requestTimeoutMs?: number;
  /** The broker's `limits.max_frame_bytes` (default 65 536); larger frames are refused locally. */
  maxFrameBytes?: number;
  /** Close codes after which the client does not reconnect (default 4000 and 1008). */
  permanentCloseCodes?: readonly number[];
  logger?: Logger | LogLevel;
  /** Random source for jitter (tests). */
  random?: () => number;
}

interface EventTargetLike {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

const NO_FRAMES_GRACE_MS = 5_000;

/** What every client variant's core is built from: resume store, logger, request timeout, frame limit. */
export function coreSettings(options: ClientOptions): [ResumeStore, Logger, number, number] {
  const storage = options.storage ?? defaultStorage();
  return [
    new ResumeStore(storage, options.storageKey ?? `switchboard:${options.url}`),
    resolveLogger(options.logger),
    options.requestTimeoutMs ?? 30_000,
    options.maxFrameBytes ?? 65_536,
  ];
}

/**
 * A protocol-v1 client on one WebSocket: connects, answers pings, reconnects with backoff,
 * resumes its rooms from their last seq, and delivers each room message once, in order.
 */
export class WebSocketClient extends ClientCore {
  /** The broker's id of the current connection (undefined while not connected). */
  connectionId: string | undefined;
  /** The session's user as the broker took it from the token. */
  user: string | undefined;

  private readonly options: ClientOptions;
  private readonly backoff: ResolvedBackoff | false;
  private readonly permanentCodes: readonly number[];
  private readonly random: () => number;
  private socket: SocketLike | undefined;
  private open = false;
  /** Bumped whenever a socket is abandoned, so its late events are ignored. */
  private generation = 0;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private heartbeatMs = 30_000;
  private authRetried = false;
  private closeReason: string | undefined;
  private readonly waiters = new Set<{ resolve: () => void; reject: (err: SwitchboardError) => void }>();
  private readonly detachers: Array<() => void> = [];

  constructor(options: ClientOptions) {
    super(...coreSettings(options));
    this.options = options;
    this.backoff = options.reconnect === false ? false : resolveBackoff(options.reconnect);
    this.permanentCodes = options.permanentCloseCodes ?? PERMANENT_CLOSE_CODES;
    this.random = options.random ?? Math.random;
    this.listenToPage();
  }

  protected get transportUp(): boolean {
    return this.open;
  }

  protected transmit(frame: Envelope): void {
    this.socket?.send(JSON.stringify(frame));
  }

  /** Connects (or waits for the connection under way); resolves once connected. */
  connect(): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      if (this.state === "connected") return resolve();
      this.waiters.add({ resolve, reject });
    });
    if (this.state === "idle" || this.state === "closed") {
      this.attempt = 0;
      this.setState("connecting");
      void this.openSocket();
    }
    return done;
  }

  /** Closes the socket for good: pending publishes and requests reject, subscriptions end. */
  disconnect(): void {
    this.abandonSocket(CloseCode.Normal, "client disconnect");
    this.finish(new SwitchboardError("closed", "the client was disconnected"));
  }

  /** Ends the client and its listeners on the page (visibility, online). */
  dispose(): void {
    this.disconnect();
    for (const detach of this.detachers.splice(0)) detach();
  }

  private async openSocket(): Promise<void> {
    const generation = ++this.generation;
    const Ctor = this.options.WebSocket ?? (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    if (!Ctor) {
      this.finish(new SwitchboardError("unavailable", "no WebSocket implementation: pass one as options.WebSocket"));
      return;
    }
    let token: string | undefined;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (err) {
      if (generation !== this.generation) return;
      this.logger.warn("token refresh failed", err);
      this.events.emit("error", new SwitchboardError("token", `token refresh failed: ${String(err)}`));
      this.scheduleReconnect(undefined, "token refresh failed");
      return;
    }
    if (generation !== this.generation) return;
    let socket: SocketLike;
    try {
      socket = new Ctor(withToken(this.options.url, token), SUBPROTOCOLS);
    } catch (err) {
      this.finish(new SwitchboardError("bad_request", `cannot open ${this.options.url}: ${String(err)}`));
      return;
    }
    this.socket = socket;
    this.closeReason = undefined;
    socket.onmessage = (event) => {
      if (generation === this.generation) this.onFrame(event.data);
    };
    socket.onclose = (event) => {
      if (generation === this.generation) this.onClose(event.code, event.reason);
    };
    socket.onerror = () => {
      // Always followed by a close event, which decides what happens next.
    };
  }

  /** A text frame: one envelope, or several newline-separated ones when the broker batches
   * frames (`switchboard.v1.batch`; compact JSON never holds a raw newline, so splitting a
   * plain v1 frame changes nothing). */
  private onFrame(data: unknown): void {
    if (typeof data !== "string") return;
    if (!data.includes("\n")) return this.onEnvelope(data);
    for (const line of data.split("\n")) {
      if (line) this.onEnvelope(line);
    }
  }

  private onEnvelope(data: string): void {
    let frame: Envelope;
    try {
      frame = JSON.parse(data) as Envelope;
    } catch {
      this.logger.warn("ignoring a frame that is not JSON");
      return;
    }
    this.armWatchdog();
    switch (frame.type) {
      case "system.connection.established":
        this.onEstablished(frame.payload as EstablishedPayload);
        break;
      case "system.ping":
        this.transmit({ type: "system.pong" });
        break;
      case "system.connection.close":
        this.closeReason = (frame.payload as { reason?: string } | undefined)?.reason;
        break;
    }
    this.receive(frame);
  }

  private onEstablished(payload: EstablishedPayload): void {
    const previous = this.store.connectionId;
    this.connectionId = payload.connection_id;
    this.user = payload.user;
    this.heartbeatMs = payload.heartbeat_interval_ms || this.heartbeatMs;
    this.store.connectionId = payload.connection_id;
    this.open = true;
    this.attempt = 0;
    this.authRetried = false;
    this.armWatchdog();
    if (previous) {
      // Every room is listed with its last seq, so each is replayed from there even when
      // the broker no longer has the old session (session_found: false).
      this.transmit({
        type: "system.connection.resume",
        id: newId(),
        payload: { connection_id: previous, rooms: this.rooms.resumeRooms() },
      });
      for (const room of this.rooms.unjoinedRooms()) this.sendJoin(room, this.rooms.sinceForJoin(room));
    } else {
      this.rejoinAll();
    }
    // Frames sent behind the resume are held by the broker until its reply, so publishes
    // pipelined here find their rooms joined.
    this.flushPending();
    this.setState("connected");
    for (const waiter of this.waiters) waiter.resolve();
    this.waiters.clear();
  }

  private onClose(code: number, reason: string): void {
    this.open = false;
    this.socket = undefined;
    this.connectionId = undefined;
    clearTimeout(this.watchdog);
    this.failSentRequests();
    const why = reason || this.closeReason || "";
    this.logger.info(`socket closed ${code} ${why}`);
    if (this.permanentCodes.includes(code)) {
      // A refused token may only have expired: a token function gets one immediate retry.
      if (code === CloseCode.AuthenticationFailed && typeof this.options.token === "function" && !this.authRetried) {
        this.authRetried = true;
        void this.openSocket();
        return;
      }
      this.finish(new SwitchboardError(code === CloseCode.AuthenticationFailed ? "unauthorized" : "disconnected", why || `closed with ${code}`), code);
      return;
    }
    // 1012: the broker is restarting on purpose; come back at once rather than after a
    // backoff grown during earlier trouble.
    if (code === CloseCode.ServiceRestart) this.attempt = 0;
    this.scheduleReconnect(code, why);
  }

  private scheduleReconnect(code: number | undefined, reason: string): void {
    if (this.backoff === false) {
      this.finish(new SwitchboardError("connection_lost", `connection closed (${code ?? "no code"} ${reason})`), code);
      return;
    }
    this.attempt += 1;
    if (this.attempt > this.backoff.maxAttempts) {
      this.finish(new SwitchboardError("unavailable", `gave up after ${this.backoff.maxAttempts} attempts`), code);
      return;
    }
    const delayMs = backoffDelay(this.attempt, this.backoff, this.random);
    this.setState("reconnecting", { code, reason });
    this.events.emit("reconnecting", { attempt: this.attempt, delayMs, at: Date.now() + delayMs });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.openSocket(), delayMs);
  }

  private finish(error: SwitchboardError, code?: number): void {
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchdog);
    this.open = false;
    this.failEverything(error);
    for (const waiter of this.waiters) waiter.reject(error);
    this.waiters.clear();
    if (error.code !== "closed") this.events.emit("error", error);
    this.setState("closed", { code, reason: error.message });
  }

  /** Drops the current socket without waiting for its close handshake. */
  private abandonSocket(code: number, reason: string): void {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchdog);
    const socket = this.socket;
    this.socket = undefined;
    this.open = false;
    this.connectionId = undefined;
    try {
      socket?.close(code, reason);
    } catch {
      // Closing a socket that never opened may throw; it is gone either way.
    }
  }

  /** A connection that stopped carrying frames (a dead network path) is replaced. */
  private armWatchdog(): void {
    clearTimeout(this.watchdog);
    if (!this.open) return;
    this.watchdog = setTimeout(() => {
      this.logger.warn(`no frame for ${2 * this.heartbeatMs + NO_FRAMES_GRACE_MS} ms; reconnecting`);
      this.abandonSocket(4001, "no heartbeat from the broker");
      this.failSentRequests();
      this.scheduleReconnect(undefined, "heartbeat missed");
    }, 2 * this.heartbeatMs + NO_FRAMES_GRACE_MS);
  }

  private listenToPage(): void {
    const doc = (globalThis as { document?: EventTargetLike & { visibilityState?: string } }).document;
    if (this.options.pauseWhenHidden && doc) {
      const onVisibility = () => {
        if (doc.visibilityState === "hidden") {
          if (this.state === "connected" || this.state === "reconnecting" || this.state === "connecting") {
            this.abandonSocket(CloseCode.Normal, "page hidden");
            this.failSentRequests();
            this.setState("paused");
          }
        } else if (this.state === "paused") {
          this.attempt = 0;
          this.setState("reconnecting");
          void this.openSocket();
        }
      };
      doc.addEventListener("visibilitychange", onVisibility);
      this.detachers.push(() => doc.removeEventListener("visibilitychange", onVisibility));
    }
    const win = globalThis as Partial<EventTargetLike>;
    if (typeof win.addEventListener === "function" && typeof win.removeEventListener === "function") {
      // Back online: try now instead of waiting out the backoff.
      const onOnline = () => {
        if (this.state === "reconnecting" && !this.socket) {
          clearTimeout(this.retryTimer);
          void this.openSocket();
        }
      };
      win.addEventListener("online", onOnline);
      this.detachers.push(() => win.removeEventListener?.("online", onOnline));
    }
  }
}

function withToken(url: string, token: string | undefined): string {
  if (!token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}
