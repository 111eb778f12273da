import type { Envelope, RoomMessage } from "./protocol.js";
import type { ResumeStore } from "./storage.js";
import type { JoinInfo, RecoveryEvent, Subscription } from "./subscription.js";

interface RoomState {
  /** Last seq delivered (or the room's seq at a join without replay); undefined: never joined. */
  lastSeq: number | undefined;
  subscription?: Subscription<unknown>;
  /** A join without `since_seq` is in flight: its `room.joined.seq` becomes `lastSeq`. */
  joiningLive: boolean;
  /** The room was reset: drop its frames until the replay-from-0 join's `room.joined`. */
  awaitingRestart: boolean;
  /** Left by the caller: drop what is still in flight until `room.left`. */
  leaving: boolean;
}

export type Verdict = "deliver" | "drop" | "untracked";

/**
 * The per-room bookkeeping that makes delivery exactly-once and in order: the last seq
 * seen per room (persisted for resume), duplicate and out-of-date frames dropped, room
 * resets detected, and `recovered: false` reported.
 */
export class RoomTracker {
  private readonly rooms = new Map<string, RoomState>();

  constructor(
    private readonly store: ResumeStore,
    private readonly hooks: {
      /** The room restarted its numbering: join it again with `since_seq: 0`. */
      restart(room: string): void;
      recovery(event: RecoveryEvent): void;
    },
  ) {
    // Rooms from an earlier page stay dormant (listed on resume, frames not delivered and
    // not counted as seen) until the page subscribes to them again.
    for (const [room, seq] of Object.entries(store.rooms())) {
      this.rooms.set(room, { lastSeq: seq, joiningLive: false, awaitingRestart: false, leaving: false });
    }
  }

  /** Tracks `room` for `subscription`; `sinceSeq` overrides the stored position. */
  attach(room: string, subscription: Subscription<unknown>, sinceSeq?: number): void {
    const state = this.rooms.get(room) ?? { lastSeq: undefined, joiningLive: false, awaitingRestart: false, leaving: false };
    state.subscription = subscription;
    state.leaving = false;
    if (sinceSeq !== undefined) state.lastSeq = sinceSeq;
    this.rooms.set(room, state);
  }

  subscription(room: string): Subscription<unknown> | undefined {
    const state = this.rooms.get(room);
    return state && !state.leaving ? state.subscription : undefined;
  }

  lastSeq(room: string): number | undefined {
    return this.rooms.get(room)?.lastSeq;
  }

  /** The `since_seq` of the next join of `room` (undefined: no replay), noting a live join. */
  sinceForJoin(room: string): number | undefined {
    const state = this.rooms.get(room);
    if (!state) return undefined;
    if (state.lastSeq === undefined) state.joiningLive = true;
    return state.lastSeq;
  }

  /** Rooms a page wants back, with their last seq, for `system.connection.resume`. */
  resumeRooms(): Record<string, number> {
    const rooms: Record<string, number> = {};
    for (const [room, state] of this.rooms) {
      if (!state.leaving && state.lastSeq !== undefined) rooms[room] = state.lastSeq;
    }
    return rooms;
  }

  /** Subscribed rooms not yet in {@link resumeRooms} (never joined). */
  unjoinedRooms(): string[] {
    return [...this.rooms].filter(([, s]) => s.subscription && !s.leaving && s.lastSeq === undefined).map(([r]) => r);
  }

  subscribedRooms(): string[] {
    return [...this.rooms].filter(([, s]) => s.subscription && !s.leaving).map(([r]) => r);
  }

  detach(room: string): void {
    const state = this.rooms.get(room);
    if (!state) return;
    state.leaving = true;
    state.subscription = undefined;
    this.store.forgetRoom(room);
  }

  /** The broker refused the room (join error, or its entry in a resume reply). */
  refuse(room: string): Subscription<unknown> | undefined {
    const subscription = this.rooms.get(room)?.subscription;
    this.rooms.delete(room);
    this.store.forgetRoom(room);
    return subscription;
  }

  /** Ends every subscription (the client closed for good). */
  endAll(): void {
    for (const state of this.rooms.values()) state.subscription?.end();
    for (const state of this.rooms.values()) state.subscription = undefined;
  }

  roomLeft(room: string): void {
    if (this.rooms.get(room)?.leaving) this.rooms.delete(room);
  }

  joined(frame: Envelope<{ recovered?: boolean }>): void {
    const room = frame.room ?? "";
    const seq = frame.seq ?? 0;
    const state = this.rooms.get(room);
    if (!state || state.leaving) return;
    const recovered = frame.payload?.recovered !== false;
    const info: JoinInfo = { room, seq, recovered };
    if (state.awaitingRestart) {
      state.awaitingRestart = false;
    } else if (state.lastSeq !== undefined && seq < state.lastSeq) {
      // The room's latest seq is below one we saw: it restarted at 1 (idle past its TTL,
      // or a broker restart on the memory engine). Its new messages would look like
      // duplicates, so start counting again and ask for its whole new history.
      const event: RecoveryEvent = { room, recovered: false, reset: true, sinceSeq: state.lastSeq, seq };
      state.lastSeq = 0;
      state.joiningLive = false;
      state.awaitingRestart = true;
      this.store.setSeq(room, 0);
      state.subscription?.lost(event);
      this.hooks.recovery(event);
      this.hooks.restart(room);
      return;
    }
    if (state.joiningLive) {
      state.joiningLive = false;
      if (state.lastSeq === undefined || seq > state.lastSeq) state.lastSeq = seq;
      if (state.subscription) this.store.setSeq(room, state.lastSeq);
    }
    state.subscription?.joined(info);
    if (!recovered) {
      const event: RecoveryEvent = { room, recovered: false, reset: false, sinceSeq: state.lastSeq ?? 0, seq };
      state.subscription?.lost(event);
      this.hooks.recovery(event);
    }
  }

  /** Decides whether a room message is new for this page, and delivers it if so. */
  message(frame: RoomMessage): Verdict {
    const state = this.rooms.get(frame.room);
    if (!state) return "untracked";
    // Dormant rooms are not advanced, so subscribing later replays what they missed.
    if (!state.subscription || state.leaving || state.awaitingRestart) return "drop";
    if (state.lastSeq !== undefined && frame.seq <= state.lastSeq) return "drop";
    state.lastSeq = frame.seq;
    state.joiningLive = false;
    this.store.setSeq(frame.room, frame.seq);
    state.subscription.deliver(frame);
    return "deliver";
  }
}
