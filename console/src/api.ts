// The HTTP API with the operator's credential. The credential lives in this tab's
// sessionStorage only: it goes when the tab closes, and other tabs log in on their own.

const KEY = "switchboard-console:credential";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function storedCredential(): string | undefined {
  try {
    return sessionStorage.getItem(KEY) ?? undefined;
  } catch {
    return undefined;
  }
}

export function storeCredential(credential: string | undefined): void {
  try {
    if (credential === undefined) sessionStorage.removeItem(KEY);
    else sessionStorage.setItem(KEY, credential);
  } catch {
    // Storage off (a privacy mode): the login lasts as long as the page.
  }
}

/** Whether the credential is a JWT (three base64url parts) rather than an API key. */
export function isJwt(credential: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(credential);
}

/** The `sub` of a JWT, for the header line; the broker alone decides what it may do. */
export function jwtSubject(credential: string): string | undefined {
  try {
    const part = credential.split(".")[1] ?? "";
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const sub = (JSON.parse(json) as { sub?: unknown }).sub;
    return typeof sub === "string" ? sub : undefined;
  } catch {
    return undefined;
  }
}

export class Api {
  /** Called on 401 and 403: the credential stopped working (expired, key removed). */
  onRefused: (error: ApiError) => void = () => undefined;

  constructor(readonly credential: string) {}

  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(path, {
      method,
      headers: {
        authorization: `Bearer ${this.credential}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const text = await response.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!response.ok) {
      const error = (json as { error?: { code?: string; message?: string } } | undefined)?.error;
      const failure = new ApiError(response.status, error?.code ?? "http_" + response.status, error?.message ?? (text || response.statusText));
      if (response.status === 401 || response.status === 403) this.onRefused(failure);
      throw failure;
    }
    return json as T;
  }
}

/** `setInterval` for an async task, without overlapping runs; returns the stop function. */
export function every(ms: number, task: () => Promise<void>): () => void {
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const run = async (): Promise<void> => {
    try {
      await task();
    } catch {
      // Each view shows its own errors; a failed round is retried on the next tick.
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  void run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
