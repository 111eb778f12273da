import type { ClientOptions, SocketConstructor } from "./client.js";
import { WebSocketClient } from "./client.js";
import { resolveLogger } from "./logger.js";
import type { PollingClientOptions } from "./polling.js";
import { PollingClient } from "./polling.js";
import type { SharedClientOptions } from "./shared.js";
import { SharedClient } from "./shared.js";

export interface CreateClientOptions extends SharedClientOptions {
  /** One socket for all tabs of this origin (needs Web Locks and BroadcastChannel). */
  shared?: boolean;
  /** Where WebSockets are missing: poll the HTTP API with these settings instead. */
  polling?: Omit<PollingClientOptions, "storage" | "storageKey" | "logger">;
}

/**
 * The right client for the platform: shared between tabs when asked and possible, else one
 * WebSocket, else HTTP polling when configured.
 */
export function createClient(options: CreateClientOptions): WebSocketClient | SharedClient | PollingClient {
  const g = globalThis as { WebSocket?: SocketConstructor; BroadcastChannel?: unknown; navigator?: { locks?: unknown } };
  const hasSocket = Boolean(options.WebSocket ?? g.WebSocket);
  if (options.shared && hasSocket) {
    if ((options.channel || g.BroadcastChannel) && (options.locks || g.navigator?.locks)) return new SharedClient(options);
    resolveLogger(options.logger).info("shared mode needs Web Locks and BroadcastChannel; using a socket of this tab's own");
  }
  if (hasSocket) return new WebSocketClient(options as ClientOptions);
  if (options.polling) {
    return new PollingClient({ ...options.polling, storage: options.storage, storageKey: options.storageKey, logger: options.logger });
  }
  throw new Error("no WebSocket implementation and no polling fallback configured");
}
