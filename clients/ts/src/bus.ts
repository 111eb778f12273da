import type { Envelope } from "./protocol.js";

export type BusHandler = (frame: Envelope) => void;

/**
 * Does `type` match `pattern`? Patterns are dot-separated; `*` stands for one segment,
 * and a `*` as the last segment for one or more. So `*` matches every type, `task.*`
 * matches `task.update` and `task.event.x`, `room.*.x` matches `room.a.x` only.
 */
export function matchesPattern(pattern: string, type: string): boolean {
  if (pattern === type) return true;
  const want = pattern.split(".");
  const have = type.split(".");
  for (let i = 0; i < want.length; i++) {
    const last = i === want.length - 1;
    if (want[i] === "*") {
      if (last) return have.length > i;
      if (i >= have.length) return false;
      continue;
    }
    if (want[i] !== have[i]) return false;
  }
  return want.length === have.length;
}

/** Delivers frames to handlers by type pattern (see {@link matchesPattern}). */
export class MessageBus {
  private readonly handlers = new Map<string, Set<BusHandler>>();

  /** Returns a function that removes the handler. */
  on(pattern: string, handler: BusHandler): () => void {
    let set = this.handlers.get(pattern);
    if (!set) this.handlers.set(pattern, (set = new Set()));
    set.add(handler);
    return () => this.off(pattern, handler);
  }

  off(pattern: string, handler: BusHandler): void {
    const set = this.handlers.get(pattern);
    set?.delete(handler);
    if (set?.size === 0) this.handlers.delete(pattern);
  }

  emit(frame: Envelope): void {
    for (const [pattern, set] of this.handlers) {
      if (!matchesPattern(pattern, frame.type)) continue;
      for (const handler of [...set]) {
        try {
          handler(frame);
        } catch (err) {
          queueMicrotask(() => {
            throw err;
          });
        }
      }
    }
  }
}
