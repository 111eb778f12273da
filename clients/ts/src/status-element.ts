import type { ConnectionState, ReconnectScheduled } from "./core.js";

/** What a status element needs from a client. */
export interface StatusSource {
  readonly state: ConnectionState;
  on(event: "state", listener: (change: { to: ConnectionState }) => void): () => void;
  on(event: "reconnecting", listener: (event: ReconnectScheduled) => void): () => void;
}

/** The text for a state: `connected`, `reconnecting in 3 s`, `paused`, `offline`. */
export function describeStatus(state: ConnectionState, retryAt: number | undefined, now: number): string {
  switch (state) {
    case "connected":
      return "connected";
    case "connecting":
      return "connecting";
    case "reconnecting": {
      if (retryAt === undefined || retryAt <= now) return "reconnecting";
      return `reconnecting in ${Math.ceil((retryAt - now) / 1000)} s`;
    }
    case "paused":
      return "paused";
    default:
      return "offline";
  }
}

export const STATUS_TAG = "switchboard-status";

/**
 * Defines `<switchboard-status>` where custom elements exist (a no-op elsewhere, e.g. in
 * Node). Give it a client: `element.client = client`. It shows {@link describeStatus} and
 * mirrors the state in its `state` attribute for styling.
 */
export function defineStatusElement(tag = STATUS_TAG): boolean {
  const g = globalThis as {
    customElements?: { get(name: string): unknown; define(name: string, ctor: unknown): void };
    HTMLElement?: new () => HTMLElement;
  };
  if (!g.customElements || !g.HTMLElement) return false;
  if (g.customElements.get(tag)) return true;
  const Base = g.HTMLElement;

  class SwitchboardStatus extends Base {
    private source: StatusSource | undefined;
    private retryAt: number | undefined;
    private ticker: ReturnType<typeof setInterval> | undefined;
    private readonly unsubscribers: Array<() => void> = [];

    get client(): StatusSource | undefined {
      return this.source;
    }

    set client(source: StatusSource | undefined) {
      this.detach();
      this.source = source;
      if (source && this.isConnected) this.attach();
      this.render();
    }

    connectedCallback(): void {
      this.setAttribute("role", "status");
      if (this.source) this.attach();
      this.render();
    }

    disconnectedCallback(): void {
      this.detach();
    }

    private attach(): void {
      const source = this.source;
      if (!source || this.unsubscribers.length) return;
      this.unsubscribers.push(
        source.on("state", () => this.render()),
        source.on("reconnecting", (event) => {
          this.retryAt = event.at;
          this.render();
        }),
      );
      // The countdown changes every second while a retry is scheduled.
      this.ticker = setInterval(() => this.render(), 1000);
    }

    private detach(): void {
      for (const off of this.unsubscribers.splice(0)) off();
      clearInterval(this.ticker);
    }

    private render(): void {
      const state = this.source?.state ?? "idle";
      this.setAttribute("state", state);
      this.textContent = describeStatus(state, this.retryAt, Date.now());
    }
  }

  g.customElements.define(tag, SwitchboardStatus);
  return true;
}
