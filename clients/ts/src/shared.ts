import type { ClientOptions } from "./client.js";
import { coreSettings, WebSocketClient } from "./client.js";
import type { ConnectionState, ReconnectScheduled } from "./core.js";
import { ClientCore } from "./core.js";
import { newId } from "./ids.js";
import type { Envelope } from "./protocol.js";
import { SwitchboardError } from "./protocol.js";
import { memoryStorage } from "./storage.js";

/** The BroadcastChannel API as far as used here (structured-clone messages between tabs). */
export interface ChannelLike {
  postMessage(message: unknown): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  close(): void;
}

/** `navigator.locks` as far as used here. */
export interface LocksLike {
  request(name: string, callback: () => Promise<unknown>): Promise<unknown>;
}

export interface SharedClientOptions extends ClientOptions {
  /** Default `new BroadcastChannel(name)`. */
  channel?: ChannelLike;
  /** Default `navigator.locks`. */
  locks?: LocksLike;
  /** Channel and lock name (default `switchboard:<url>`): tabs with the same name share a socket. */
  name?: string;
}

/** Messages between tabs. Frames travel as the broker sent them; each tab dedupes by seq. */
type TabMessage =
  | { kind: "leader"; tab: string }
  | { kind: "hello"; tab: string }
  | { kind: "frame"; frame: Envelope }
  | { kind: "state"; state: ConnectionState; connectionId?: string }
  | { kind: "reconnecting"; event: ReconnectScheduled }
  | { kind: "send"; tab: string; frame: Envelope };

/**
 * A client whose tabs share one socket. The tab holding the Web Lock (the leader) runs a
 * {@link WebSocketClient}, sends every tab's frames and posts every frame it receives on a
 * BroadcastChannel; every tab (the leader's included) keeps its own subscriptions, seqs and
 * pending publishes. When the leader goes, the next tab in the lock's queue takes over,
 * opens its own socket, and every tab joins its rooms again from its own last seq.
 */
export class SharedClient extends ClientCore {
  readonly tabId = newId();
  connectionId: string | undefined;

  private readonly channel: ChannelLike;
  private readonly locks: LocksLike;
  private readonly lockName: string;
  private readonly options: SharedClientOptions;
  private leaderClient: WebSocketClient | undefined;
  private releaseLock: (() => void) | undefined;
  private started = false;
  private mirroredState: ConnectionState = "idle";
  /** A leader's socket is new to this tab's rooms: join them once it is up. */
  private needRejoin = true;
  /** Leader only: which tabs want each room, so one tab's leave does not cut the others off. */
  private readonly interest = new Map<string, Set<string>>();

  constructor(options: SharedClientOptions) {
    super(...coreSettings(options));
    this.options = options;
    this.lockName = options.name ?? `switchboard:${options.url}`;
    const Channel = (globalThis as { BroadcastChannel?: new (name: string) => ChannelLike }).BroadcastChannel;
    const locks = options.locks ?? (globalThis as { navigator?: { locks?: LocksLike } }).navigator?.locks;
    const channel = options.channel ?? (Channel ? new Channel(this.lockName) : undefined);
    if (!channel || !locks) throw new SwitchboardError("unavailable", "shared mode needs BroadcastChannel and navigator.locks");
    this.channel = channel;
    this.locks = locks;
    this.channel.onmessage = (event) => this.onTabMessage(event.data as TabMessage);
  }

  get isLeader(): boolean {
    return this.leaderClient !== undefined;
  }

  protected get transportUp(): boolean {
    return this.started && this.mirroredState === "connected";
  }

  protected transmit(frame: Envelope): void {
    if (this.leaderClient) this.leaderSend(frame, this.tabId);
    else this.post({ kind: "send", tab: this.tabId, frame });
  }

  /** Joins the tabs: queues for leadership and asks the current leader (if any) for its state. */
  connect(): Promise<void> {
    const connected = new Promise<void>((resolve, reject) => {
      if (this.state === "connected") return resolve();
      const off = this.on("state", ({ to, reason }) => {
        if (to === "connected") resolve();
        else if (to === "closed") reject(new SwitchboardError("closed", reason ?? "closed"));
        else return;
        off();
      });
    });
    if (!this.started) {
      this.started = true;
      this.mirror("connecting");
      void this.locks.request(this.lockName, () => this.lead());
      this.post({ kind: "hello", tab: this.tabId });
    }
    return connected;
  }

  /** Leaves the tabs; a leader hands the socket over to the next tab. */
  disconnect(): void {
    if (!this.started) return;
    this.started = false;
    this.leaderClient?.dispose();
    this.leaderClient = undefined;
    this.releaseLock?.();
    this.channel.onmessage = null;
    this.channel.close();
    this.failEverything(new SwitchboardError("closed", "the client was disconnected"));
    this.mirror("closed");
  }

  /** Runs while this tab holds the lock; the lock goes with the returned promise. */
  private lead(): Promise<void> {
    if (!this.started) return Promise.resolve();
    const released = new Promise<void>((resolve) => (this.releaseLock = resolve));
    // The leader's own socket keeps its resume state in memory: the tabs' seqs are what count.
    const client = new WebSocketClient({ ...this.options, storage: memoryStorage() });
    this.leaderClient = client;
    this.needRejoin = true;
    client.on("frame", (frame) => {
      this.post({ kind: "frame", frame });
      this.receive(frame);
    });
    client.on("state", ({ to }) => {
      this.post({ kind: "state", state: to, connectionId: client.connectionId });
      this.mirrorLeaderState(to, client.connectionId);
    });
    client.on("reconnecting", (event) => {
      this.post({ kind: "reconnecting", event });
      this.events.emit("reconnecting", event);
    });
    this.post({ kind: "leader", tab: this.tabId });
    void client.connect().catch(() => undefined);
    return released;
  }

  private onTabMessage(message: TabMessage): void {
    switch (message.kind) {
      case "frame":
        if (!this.leaderClient) this.receive(message.frame);
        break;
      case "state":
        if (!this.leaderClient) this.mirrorLeaderState(message.state, message.connectionId);
        break;
      case "reconnecting":
        if (!this.leaderClient) this.events.emit("reconnecting", message.event);
        break;
      case "leader":
        // A new leader has a fresh socket: once it is connected, this tab joins its rooms
        // again from its own seqs. (A leader tab that was closed never said goodbye.)
        if (!this.leaderClient) {
          this.needRejoin = true;
          this.mirror("reconnecting");
        }
        break;
      case "hello":
        if (this.leaderClient) {
          this.post({ kind: "state", state: this.leaderClient.state, connectionId: this.leaderClient.connectionId });
        }
        break;
      case "send":
        if (this.leaderClient) this.leaderSend(message.frame, message.tab);
        break;
    }
  }

  private mirrorLeaderState(state: ConnectionState, connectionId: string | undefined): void {
    const wasConnected = this.mirroredState === "connected";
    this.connectionId = connectionId;
    // A leader that closed for good hands over; followers wait for the next one.
    this.mirror(state === "closed" && !this.leaderClient ? "reconnecting" : state);
    if (state === "connected" && !wasConnected) this.onLeaderReady();
  }

  private onLeaderReady(): void {
    // The same leader reconnecting resumes its rooms itself; only a new one needs the joins.
    if (this.needRejoin) {
      this.needRejoin = false;
      this.rejoinAll();
    }
    this.flushPending();
  }

  private mirror(state: ConnectionState): void {
    this.mirroredState = state;
    this.setState(state);
  }

  /** Sends a tab's frame on the leader's socket; joins also go into its resume state. */
  private leaderSend(frame: Envelope, tab: string): void {
    const client = this.leaderClient;
    if (!client) return;
    const room = frame.room;
    if (frame.type === "room.join" && room) {
      let tabs = this.interest.get(room);
      if (!tabs) this.interest.set(room, (tabs = new Set()));
      tabs.add(tab);
      client.adopt(room, (frame.payload as { since_seq?: number } | undefined)?.since_seq);
    } else if (frame.type === "room.leave" && room) {
      const tabs = this.interest.get(room);
      tabs?.delete(tab);
      if (tabs && tabs.size > 0) return;
      this.interest.delete(room);
      client.forget(room);
    }
    client.send(frame);
  }

  private post(message: TabMessage): void {
    try {
      this.channel.postMessage(message);
    } catch (err) {
      this.logger.warn("could not post to the other tabs", err);
    }
  }
}
