import { MessageBus } from "./bus.js";
import { Emitter } from "./emitter.js";
import { newId } from "./ids.js";
import type { Logger } from "./logger.js";
import type { Ack, Envelope, ResumedPayload } from "./protocol.js";
import { isRoomMessage, SwitchboardError } from "./protocol.js";
import { RoomTracker } from "./rooms.js";
import type { ResumeStore } from "./storage.js";
import type { RecoveryEvent } from "./subscription.js";
import { Subscription } from "./subscription.js";

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "paused" | "closed";

export interface StateChange {
  from: ConnectionState;
  to: ConnectionState;
  /** Close code that caused the change, when there was one. */
  code?: number;
  reason?: string;
}

export interface ReconnectScheduled {
  /** 1 for the first retry after a drop. */
  attempt: number;
  delayMs: number;
  /** `Date.now()` at which the attempt starts. */
  at: number;
}

export interface ClientEvents {
  state: StateChange;
  reconnecting: ReconnectScheduled;
  /** A room lost messages (`recovered: false`); also reported on the room's subscription. */
  recovery: RecoveryEvent;
  resumed: ResumedPayload;
  /** Every inbound frame, before dedupe (duplicates of replays included). */
  frame: Envelope;
  /** A `system.error` no request is waiting for, or a connection problem. */
  error: SwitchboardError;
}

export interface PublishOptions {
  /** The message id (default: a fresh UUID). A retry with the same id is delivered once. */
  id?: string;
  /** Reject if no ack arrives within this many ms (default: wait, across reconnects). */
  timeoutMs?: number;
}

export interface RequestOptions {
  timeoutMs?: number;
  /** Echoed on the reply; not checked by the broker for application types. */
  room?: string;
}

export interface SubscribeOptions {
  /** Replay from this seq (0: everything the room still keeps). Default: the stored position, else live only. */
  sinceSeq?: number;
}

interface PendingPublish {
  frame: Envelope;
  resolve: (ack: Ack) => void;
  reject: (err: SwitchboardError) => void;
  timer?: ReturnType<typeof setTimeout>;
}

interface PendingRequest {
  frame: Envelope;
  sent: boolean;
  resolve: (reply: Envelope) => void;
  reject: (err: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * What every client variant shares, whatever carries its frames: subscriptions with
 * exactly-once delivery, publishes resolved by their ack (and resent with the same id after
 * a reconnect), requests correlated by id, the message bus, events and the state.
 * Subclasses move frames: {@link transmit} out, {@link receive} in.
 */
export abstract class ClientCore {
  /** Frames by type, with wildcard patterns: `client.bus.on("task.*", …)`. */
  readonly bus = new MessageBus();
  protected readonly events = new Emitter<ClientEvents>();
  protected readonly rooms: RoomTracker;
  private readonly publishes = new Map<string, PendingPublish>();
  private readonly requests = new Map<string, PendingRequest>();
  /** Join request id → room, to match a refusal to its subscription. */
  private readonly joins = new Map<string, string>();
  private currentState: ConnectionState = "idle";

  protected constructor(
    protected readonly store: ResumeStore,
    protected readonly logger: Logger,
    private readonly requestTimeoutMs: number,
    private readonly maxFrameBytes: number,
  ) {
    this.rooms = new RoomTracker(store, {
      restart: (room) => this.sendJoin(room, 0),
      recovery: (event) => {
        this.logger.warn(`room ${event.room} did not recover every message`, event);
        this.events.emit("recovery", event);
      },
    });
  }

  /** Starts the transport; resolves once connected. */
  abstract connect(): Promise<void>;

  /** Stops for good: pending publishes and requests reject, subscriptions end. */
  abstract disconnect(): void;

  /** True when frames handed to it go out now. */
  protected abstract get transportUp(): boolean;

  /** Sends one frame; called only while {@link transportUp}. */
  protected abstract transmit(frame: Envelope): void;

  get state(): ConnectionState {
    return this.currentState;
  }

  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  off<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): void {
    this.events.off(event, listener);
  }

  /** Sends a raw frame now; false when not connected (nothing is queued). */
  send(frame: Envelope): boolean {
    if (!this.transportUp) return false;
    this.transmit(frame);
    return true;
  }

  subscribe<P = unknown>(room: string, options: SubscribeOptions = {}): Subscription<P> {
    const existing = this.rooms.subscription(room) as Subscription<P> | undefined;
    if (existing) {
      const last = existing.lastSeq;
      if (options.sinceSeq !== undefined && last !== undefined && options.sinceSeq < last) {
        // Already delivered messages are dropped as duplicates; this only fills gaps.
        this.sendJoin(room, options.sinceSeq);
      }
      return existing;
    }
    const subscription = new Subscription<P>(
      room,
      () => this.rooms.lastSeq(room),
      () => this.unsubscribe(room),
    );
    this.rooms.attach(room, subscription as Subscription<unknown>, options.sinceSeq);
    if (this.transportUp) this.sendJoin(room, this.rooms.sinceForJoin(room));
    return subscription;
  }

  /**
   * Tracks `room` for resume without a listener and without sending a join (a shared
   * socket's leader does this for rooms that other tabs join).
   */
  adopt(room: string, sinceSeq?: number): void {
    if (this.rooms.subscription(room)) return;
    const subscription = new Subscription(room, () => this.rooms.lastSeq(room), () => this.forget(room));
    this.rooms.attach(room, subscription, sinceSeq);
    this.rooms.sinceForJoin(room);
  }

  /** Stops tracking `room` without sending a leave. */
  forget(room: string): void {
    this.rooms.subscription(room)?.end();
    this.rooms.detach(room);
  }

  unsubscribe(room: string): void {
    const subscription = this.rooms.subscription(room);
    if (!subscription) return;
    this.rooms.detach(room);
    subscription.end();
    if (this.transportUp) this.transmit({ type: "room.leave", id: newId(), room });
  }

  /** Publishes into a joined room; resolves with the broker's ack (seq, duplicate). */
  publish(room: string, payload: unknown, options: PublishOptions = {}): Promise<Ack> {
    const id = options.id ?? newId();
    const frame: Envelope = { type: "room.publish", id, room, payload };
    const tooLarge = this.checkSize(frame);
    if (tooLarge) return Promise.reject(tooLarge);
    if (this.publishes.has(id)) return Promise.reject(new SwitchboardError("bad_request", `publish ${id} is already pending`));
    return new Promise<Ack>((resolve, reject) => {
      const pending: PendingPublish = { frame, resolve, reject };
      if (options.timeoutMs !== undefined) {
        pending.timer = setTimeout(() => {
          this.publishes.delete(id);
          reject(new SwitchboardError("timeout", `no ack for ${id} within ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      this.publishes.set(id, pending);
      if (this.transportUp) this.transmit(frame);
    });
  }

  /** Sends an application request and resolves with the reply frame (or the broker's error). */
  request<R = unknown>(type: string, payload?: unknown, options: RequestOptions = {}): Promise<Envelope<R>> {
    const id = newId();
    const frame: Envelope = { type, id, payload, ...(options.room ? { room: options.room } : {}) };
    const tooLarge = this.checkSize(frame);
    if (tooLarge) return Promise.reject(tooLarge);
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    return new Promise<Envelope<R>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.requests.delete(id);
        reject(new SwitchboardError("timeout", `no reply to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      const pending: PendingRequest = {
        frame,
        sent: false,
        resolve: resolve as (reply: Envelope) => void,
        reject,
        timer,
      };
      this.requests.set(id, pending);
      if (this.transportUp) {
        pending.sent = true;
        this.transmit(frame);
      }
    });
  }

  protected setState(to: ConnectionState, detail: { code?: number; reason?: string } = {}): void {
    const from = this.currentState;
    if (from === to) return;
    this.currentState = to;
    this.logger.debug(`state ${from} -> ${to}`, detail);
    this.events.emit("state", { from, to, ...detail });
  }

  protected sendJoin(room: string, sinceSeq: number | undefined): void {
    if (!this.transportUp) return;
    const id = newId();
    this.joins.set(id, room);
    const frame: Envelope = { type: "room.join", id, room };
    if (sinceSeq !== undefined) frame.payload = { since_seq: sinceSeq };
    this.transmit(frame);
  }

  /** Joins every subscribed room again, each from its last seq (no resume available). */
  protected rejoinAll(): void {
    for (const room of this.rooms.subscribedRooms()) this.sendJoin(room, this.rooms.sinceForJoin(room));
  }

  /** The transport is up again: send what waited (publishes keep their ids, so a retry is delivered once). */
  protected flushPending(): void {
    for (const pending of this.publishes.values()) this.transmit(pending.frame);
    for (const pending of this.requests.values()) {
      if (!pending.sent) {
        pending.sent = true;
        this.transmit(pending.frame);
      }
    }
  }

  /** The transport dropped: requests already sent cannot be known to have run, so they fail. */
  protected failSentRequests(): void {
    for (const [id, pending] of this.requests) {
      if (!pending.sent) continue;
      clearTimeout(pending.timer);
      this.requests.delete(id);
      pending.reject(new SwitchboardError("connection_lost", `connection lost before the reply to ${pending.frame.type}`));
    }
  }

  /** Closed for good: every pending promise rejects and every subscription ends. */
  protected failEverything(error: SwitchboardError): void {
    for (const pending of this.publishes.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.publishes.clear();
    for (const pending of this.requests.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.requests.clear();
    this.joins.clear();
    this.rooms.endAll();
  }

  /** Handles one inbound frame: replies, acks, joins, room messages, then the bus. */
  protected receive(frame: Envelope): void {
    this.events.emit("frame", frame);
    const correlation = frame.correlation_id;
    switch (frame.type) {
      case "ack": {
        const payload = (frame.payload ?? {}) as { id?: string; duplicate?: boolean };
        const id = correlation ?? payload.id;
        const pending = id ? this.publishes.get(id) : undefined;
        if (pending && id) {
          this.publishes.delete(id);
          clearTimeout(pending.timer);
          pending.resolve({ id, room: frame.room ?? "", seq: frame.seq ?? 0, duplicate: payload.duplicate === true });
        }
        break;
      }
      case "system.error": {
        const payload = (frame.payload ?? {}) as { code?: string; message?: string };
        const error = new SwitchboardError(payload.code ?? "internal", payload.message ?? "unknown error");
        if (!correlation || !this.settleWithError(correlation, error)) {
          this.logger.warn(`broker error: ${error.code}: ${error.message}`);
          this.events.emit("error", error);
        }
        break;
      }
      case "room.joined":
        if (correlation) this.joins.delete(correlation);
        this.rooms.joined(frame as Envelope<{ recovered?: boolean }>);
        break;
      case "room.left":
        if (frame.room) this.rooms.roomLeft(frame.room);
        break;
      case "system.connection.resumed": {
        const payload = frame.payload as ResumedPayload;
        for (const [room, report] of Object.entries(payload?.rooms ?? {})) {
          if (report.error) this.refuseRoom(room, new SwitchboardError(report.error.code, report.error.message));
        }
        this.events.emit("resumed", payload);
        break;
      }
      default:
        if (isRoomMessage(frame) && !correlation) {
          // Messages of rooms nobody here subscribed to (`broadcast`, `user:{sub}`) still
          // reach the bus; tracked rooms only when new.
          if (this.rooms.message(frame) === "drop") return;
        } else if (correlation) {
          const pending = this.requests.get(correlation);
          if (pending) {
            this.requests.delete(correlation);
            clearTimeout(pending.timer);
            pending.resolve(frame);
          }
        }
    }
    this.bus.emit(frame);
  }

  private settleWithError(correlation: string, error: SwitchboardError): boolean {
    const publish = this.publishes.get(correlation);
    if (publish) {
      this.publishes.delete(correlation);
      clearTimeout(publish.timer);
      publish.reject(error);
      return true;
    }
    const request = this.requests.get(correlation);
    if (request) {
      this.requests.delete(correlation);
      clearTimeout(request.timer);
      request.reject(error);
      return true;
    }
    const room = this.joins.get(correlation);
    if (room) {
      this.joins.delete(correlation);
      this.refuseRoom(room, error);
      return true;
    }
    return false;
  }

  private refuseRoom(room: string, error: SwitchboardError): void {
    this.logger.warn(`room ${room} refused: ${error.code}: ${error.message}`);
    this.rooms.refuse(room)?.fail(error);
  }

  private checkSize(frame: Envelope): SwitchboardError | undefined {
    const bytes = new TextEncoder().encode(JSON.stringify(frame)).length;
    // The broker closes the socket (1009) on an oversize frame; resending it after the
    // reconnect would loop, so it is refused here instead.
    if (bytes > this.maxFrameBytes) {
      return new SwitchboardError("too_large", `frame is ${bytes} bytes; the broker accepts at most ${this.maxFrameBytes}`);
    }
    return undefined;
  }
}
