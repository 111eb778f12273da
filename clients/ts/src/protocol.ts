// Wire protocol v1 types (docs/PROTOCOL.md in the switchboard repository).

/** One JSON frame as the broker sends it. Absent optional fields are omitted, never null. */
export interface Envelope<P = unknown> {
  type: string;
  id?: string;
  correlation_id?: string;
  room?: string;
  seq?: number;
  payload?: P;
  timestamp?: string;
}

/** A sequenced room message: `room.message` or a custom type published through the HTTP API. */
export interface RoomMessage<P = unknown> extends Envelope<P> {
  id: string;
  room: string;
  seq: number;
}

export interface EstablishedPayload {
  connection_id: string;
  heartbeat_interval_ms: number;
  resume_ttl_ms: number;
  user: string;
}

export interface ResumedRoomReport {
  seq?: number;
  recovered?: boolean;
  error?: { code: string; message: string };
}

export interface ResumedPayload {
  previous_connection_id: string;
  session_found: boolean;
  rooms: Record<string, ResumedRoomReport>;
}

/** What `publish` resolves with: the broker's `ack`. */
export interface Ack {
  id: string;
  room: string;
  seq: number;
  /** True when the broker had already seen this id from this publisher (a retry). */
  duplicate: boolean;
}

export const CloseCode = {
  Normal: 1000,
  ProtocolError: 1002,
  InvalidPayload: 1007,
  Policy: 1008,
  MessageTooBig: 1009,
  Internal: 1011,
  ServiceRestart: 1012,
  TryAgainLater: 1013,
  AuthenticationFailed: 4000,
  RateLimitAbuse: 4008,
  SlowConsumer: 4009,
  HeartbeatTimeout: 4010,
  TooManySessions: 4029,
} as const;

/**
 * Close codes after which reconnecting cannot help: the broker refused the credentials
 * (4000), or an operator disconnected the session on purpose (1008).
 */
export const PERMANENT_CLOSE_CODES: readonly number[] = [CloseCode.AuthenticationFailed, CloseCode.Policy];

/** Types the broker itself sends; anything else carrying `room` and `seq` is a room message too. */
export function isRoomMessage(frame: Envelope): frame is RoomMessage {
  return (
    typeof frame.room === "string" &&
    typeof frame.seq === "number" &&
    typeof frame.id === "string" &&
    frame.type !== "room.joined" &&
    frame.type !== "ack"
  );
}

/** An error the broker reported (`system.error`, an HTTP error body) or the client detected. */
export class SwitchboardError extends Error {
  constructor(
    /** Broker code (`forbidden`, `bad_request`, …) or a client one (`timeout`, `connection_lost`, `closed`). */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SwitchboardError";
  }
}
