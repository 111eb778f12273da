export interface BackoffOptions {
  /** Delay before the first retry, in ms (default 500). */
  initialDelayMs?: number;
  /** Upper bound of any delay, in ms (default 30 000). */
  maxDelayMs?: number;
  /** Attempts before giving up and closing (default: unlimited). */
  maxAttempts?: number;
  /**
   * Fraction of each delay that is random (0..1, default 0.5): the delay is drawn from
   * [base × (1 − jitter), base], so clients dropped together do not return together.
   */
  jitter?: number;
}

export type ResolvedBackoff = Required<BackoffOptions>;

export function resolveBackoff(options: BackoffOptions = {}): ResolvedBackoff {
  const resolved = {
    initialDelayMs: options.initialDelayMs ?? 500,
    maxDelayMs: options.maxDelayMs ?? 30_000,
    maxAttempts: options.maxAttempts ?? Number.POSITIVE_INFINITY,
    jitter: options.jitter ?? 0.5,
  };
  if (resolved.jitter < 0 || resolved.jitter > 1) throw new RangeError("backoff jitter must be within 0..1");
  if (resolved.initialDelayMs < 0 || resolved.maxDelayMs < resolved.initialDelayMs) {
    throw new RangeError("backoff needs 0 <= initialDelayMs <= maxDelayMs");
  }
  return resolved;
}

/** Delay before retry number `attempt` (1-based): exponential, capped, with jitter. */
export function backoffDelay(attempt: number, options: ResolvedBackoff, random: () => number = Math.random): number {
  const base = Math.min(options.maxDelayMs, options.initialDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (1 - options.jitter * random()));
}
