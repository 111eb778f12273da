import { Emitter } from "./emitter.js";
import type { RoomMessage } from "./protocol.js";
import { SwitchboardError } from "./protocol.js";

/** A room's join result as the broker reported it in `room.joined`. */
export interface JoinInfo {
  room: string;
  /** The room's latest seq when the join was processed. */
  seq: number;
  /** False when messages after the seq asked for had already left history. */
  recovered: boolean;
}

/**
 * Messages were lost to this client: part of the gap after `sinceSeq` had left history
 * (`reset: false`), or the room restarted its numbering, e.g. after a broker restart
 * (`reset: true`; the client then replays the new room from its start).
 */
export interface RecoveryEvent {
  room: string;
  recovered: false;
  reset: boolean;
  /** The last seq this client had when it rejoined. */
  sinceSeq: number;
  /** The room's latest seq at the rejoin. */
  seq: number;
}

interface SubscriptionEvents<P> {
  message: RoomMessage<P>;
  joined: JoinInfo;
  recovery: RecoveryEvent;
  error: SwitchboardError;
}

type IteratorSlot<P> = { queue: RoomMessage<P>[]; wake?: () => void };

/**
 * One room's stream of messages, each delivered once and in seq order. Use callbacks
 * (`on("message", …)`) or `for await (const message of subscription)`; each iterator buffers
 * what arrives while the loop body runs.
 */
export class Subscription<P = unknown> implements AsyncIterable<RoomMessage<P>> {
  /** Resolves at the first `room.joined`; rejects when the broker refuses the room. */
  readonly ready: Promise<JoinInfo>;
  /**
   * Undefined until the room is joined; then true, and false for good once any message of
   * this room was lost to this subscription (a later complete rejoin does not hide it).
   */
  recovered: boolean | undefined;
  /** Set when the broker refused the room. */
  error: SwitchboardError | undefined;

  private readonly events = new Emitter<SubscriptionEvents<P>>();
  private readonly iterators = new Set<IteratorSlot<P>>();
  private settleReady!: { resolve: (info: JoinInfo) => void; reject: (err: SwitchboardError) => void };
  private ended = false;

  constructor(
    readonly room: string,
    private readonly lastSeqOf: () => number | undefined,
    private readonly leave: () => void,
  ) {
    this.ready = new Promise((resolve, reject) => (this.settleReady = { resolve, reject }));
    // Callers who only iterate must not get an unhandled rejection from `ready`.
    this.ready.catch(() => undefined);
  }

  /** The seq of the last message delivered (or the room's seq at join); undefined before. */
  get lastSeq(): number | undefined {
    return this.lastSeqOf();
  }

  get active(): boolean {
    return !this.ended;
  }

  on<K extends keyof SubscriptionEvents<P>>(event: K, listener: (value: SubscriptionEvents<P>[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  off<K extends keyof SubscriptionEvents<P>>(event: K, listener: (value: SubscriptionEvents<P>[K]) => void): void {
    this.events.off(event, listener);
  }

  /** Leaves the room and ends every iterator. */
  unsubscribe(): void {
    if (this.ended) return;
    this.leave();
    this.end();
  }

  [Symbol.asyncIterator](): AsyncIterator<RoomMessage<P>> {
    const slot: IteratorSlot<P> = { queue: [] };
    this.iterators.add(slot);
    return {
      next: async () => {
        for (;;) {
          const message = slot.queue.shift();
          if (message) return { value: message, done: false };
          if (this.ended || !this.iterators.has(slot)) return { value: undefined, done: true };
          await new Promise<void>((wake) => (slot.wake = wake));
        }
      },
      return: async () => {
        this.iterators.delete(slot);
        slot.wake?.();
        return { value: undefined, done: true };
      },
    };
  }

  /** @internal */
  deliver(message: RoomMessage<P>): void {
    if (this.ended) return;
    for (const slot of this.iterators) {
      slot.queue.push(message);
      slot.wake?.();
    }
    this.events.emit("message", message);
  }

  /** @internal */
  joined(info: JoinInfo): void {
    if (this.recovered !== false) this.recovered = info.recovered;
    this.settleReady.resolve(info);
    this.events.emit("joined", info);
  }

  /** @internal */
  lost(event: RecoveryEvent): void {
    this.recovered = false;
    this.events.emit("recovery", event);
  }

  /** @internal The broker refused the room: the subscription ends. */
  fail(error: SwitchboardError): void {
    this.error = error;
    this.settleReady.reject(error);
    this.events.emit("error", error);
    this.end();
  }

  /** @internal */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.settleReady.reject(new SwitchboardError("closed", `subscription to ${this.room} ended`));
    for (const slot of this.iterators) slot.wake?.();
  }
}
