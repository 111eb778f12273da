export { backoffDelay, resolveBackoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { matchesPattern, MessageBus } from "./bus.js";
export type { BusHandler } from "./bus.js";
export { WebSocketClient } from "./client.js";
export type { ClientOptions, SocketConstructor, SocketLike, TokenSource } from "./client.js";
export { ClientCore } from "./core.js";
export type {
  ClientEvents,
  ConnectionState,
  PublishOptions,
  ReconnectScheduled,
  RequestOptions,
  StateChange,
  SubscribeOptions,
} from "./core.js";
export { createLogger } from "./logger.js";
export type { Logger, LogLevel } from "./logger.js";
export { PollingClient } from "./polling.js";
export type { FetchLike, PollingClientOptions } from "./polling.js";
export { CloseCode, isRoomMessage, PERMANENT_CLOSE_CODES, SwitchboardError } from "./protocol.js";
export type { Ack, Envelope, EstablishedPayload, ResumedPayload, RoomMessage } from "./protocol.js";
export { SharedClient } from "./shared.js";
export type { ChannelLike, LocksLike, SharedClientOptions } from "./shared.js";
export { defineStatusElement, describeStatus, STATUS_TAG } from "./status-element.js";
export type { StatusSource } from "./status-element.js";
export { memoryStorage, ResumeStore } from "./storage.js";
export type { KeyValueStorage, ResumeState } from "./storage.js";
export { Subscription } from "./subscription.js";
export type { JoinInfo, RecoveryEvent } from "./subscription.js";
export { TaskClient, TaskWatch } from "./tasks.js";
export type { ApprovalDecision, SubmitTask, Task, TaskClientOptions, TaskEvent, TaskStatus, WatchOptions } from "./tasks.js";
export { createClient } from "./create.js";
export type { CreateClientOptions } from "./create.js";

import { defineStatusElement } from "./status-element.js";

// Registered on import where custom elements exist; nothing happens in Node.
defineStatusElement();
