import type { ChannelLike, LocksLike } from "../../src/shared.js";

/** BroadcastChannel stand-in: delivers to every other open channel of the hub, asynchronously, as copies. */
export class FakeChannelHub {
  private readonly open = new Set<FakeChannel>();

  channel(): FakeChannel {
    const channel = new FakeChannel(this.open);
    this.open.add(channel);
    return channel;
  }
}

export class FakeChannel implements ChannelLike {
  onmessage: ((event: { data: unknown }) => void) | null = null;
  constructor(private readonly peers: Set<FakeChannel>) {}

  postMessage(message: unknown): void {
    const copy = structuredClone(message);
    for (const peer of this.peers) {
      if (peer !== this) queueMicrotask(() => peer.onmessage?.({ data: copy }));
    }
  }

  close(): void {
    this.peers.delete(this);
  }
}

/** navigator.locks stand-in: one exclusive holder per name, the others queued in order. */
export class FakeLocks implements LocksLike {
  private holder: { release: () => void } | undefined;
  private readonly queue: Array<() => void> = [];

  request(_name: string, callback: () => Promise<unknown>): Promise<unknown> {
    return new Promise((resolve) => {
      const grant = () => {
        let release!: () => void;
        const forced = new Promise<void>((r) => (release = r));
        this.holder = { release };
        void Promise.race([callback(), forced]).then((value) => {
          this.holder = undefined;
          resolve(value);
          this.queue.shift()?.();
        });
      };
      if (this.holder) this.queue.push(grant);
      else grant();
    });
  }

  /** What the browser does when the holding tab is closed: the lock goes to the next in line. */
  releaseHolder(): void {
    this.holder?.release();
  }
}
