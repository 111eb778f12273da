import type { Envelope } from "../../src/protocol.js";
import type { SocketLike } from "../../src/client.js";

/** A WebSocket stand-in: records what the client sends, and plays the broker's part. */
export class MockSocket implements SocketLike {
  static instances: MockSocket[] = [];
  readonly sent: Envelope[] = [];
  closedWith: { code?: number; reason?: string } | undefined;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    MockSocket.instances.push(this);
  }

  static reset(): void {
    MockSocket.instances = [];
  }

  static last(): MockSocket {
    const socket = MockSocket.instances.at(-1);
    if (!socket) throw new Error("no socket was opened");
    return socket;
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Envelope);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
  }

  /** The broker sends a frame. */
  deliver(frame: Envelope): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** Several envelopes in one frame, newline-separated (switchboard.v1.batch). */
  deliverBatch(frames: Envelope[]): void {
    this.onmessage?.({ data: frames.map((f) => JSON.stringify(f)).join("\n") });
  }

  established(connectionId: string, heartbeatMs = 30_000): void {
    this.onopen?.({});
    this.deliver({
      type: "system.connection.established",
      id: "e",
      payload: { connection_id: connectionId, heartbeat_interval_ms: heartbeatMs, resume_ttl_ms: 120_000, user: "alice" },
    });
  }

  /** The connection ends with `code` (1006: dropped without a close frame). */
  drop(code = 1006, reason = ""): void {
    this.onclose?.({ code, reason });
  }

  sentOfType(type: string): Envelope[] {
    return this.sent.filter((frame) => frame.type === type);
  }

  message(room: string, seq: number, payload: unknown = { n: seq }): void {
    this.deliver({ type: "room.message", id: `m${seq}`, room, seq, payload });
  }

  joined(room: string, seq: number, recovered = true, correlation?: string): void {
    this.deliver({ type: "room.joined", id: "j", room, seq, payload: { recovered }, ...(correlation ? { correlation_id: correlation } : {}) });
  }
}
