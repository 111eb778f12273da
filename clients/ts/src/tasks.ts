import type { SocketConstructor, TokenSource } from "./client.js";
import { WebSocketClient } from "./client.js";
import { Emitter } from "./emitter.js";
import type { Logger, LogLevel } from "./logger.js";
import { resolveLogger } from "./logger.js";
import type { FetchLike } from "./polling.js";
import type { Envelope } from "./protocol.js";
import { SwitchboardError } from "./protocol.js";
import { memoryStorage } from "./storage.js";

export type TaskStatus = "pending" | "running" | "awaiting_approval" | "completed" | "failed" | "cancelled";

export interface Task {
  id: string;
  status: TaskStatus;
  [field: string]: unknown;
}

/** One task event (docs/TASKS.md), with the seq of its room message. */
export interface TaskEvent {
  version: number;
  id: string;
  type: string;
  timestamp: string;
  data: { taskId: string; status?: TaskStatus; [field: string]: unknown };
  seq: number;
}

export interface SubmitTask {
  task: string;
  priority?: "low" | "normal" | "high" | "urgent" | 0 | 1 | 2 | 3;
  conversationId?: string;
  context?: unknown;
  /** Systems only (API key or admin token): the user the task is for. */
  userId?: string;
}

export interface ApprovalDecision {
  approvalId: string;
  approved: boolean;
  message?: string;
  modifiedParameters?: unknown;
}

export interface TaskClientOptions {
  /** `http://` or `https://` base of the broker. */
  baseUrl: string;
  /** The user's token (or an API key / admin token for systems). */
  token: TokenSource;
  WebSocket?: SocketConstructor;
  fetch?: FetchLike;
  logger?: Logger | LogLevel;
}

export interface WatchOptions {
  /** Deliver events after this seq (default 0: the whole history). */
  since?: number;
  /** `socket`: the updates WebSocket; `poll`: the events long-poll; `auto` (default): socket when available. */
  transport?: "auto" | "socket" | "poll";
  /** Long-poll wait per request (default 25 000 ms; the broker caps it at 30 s). */
  waitMs?: number;
}

const FINAL: ReadonlySet<string> = new Set(["completed", "failed", "cancelled"]);

interface WatchEvents {
  event: TaskEvent;
  end: TaskStatus | undefined;
  error: SwitchboardError;
}

/**
 * One task's events, each once and in seq order, until the task finishes (or `stop()`).
 * Use `on("event", …)` or `for await`.
 */
export class TaskWatch implements AsyncIterable<TaskEvent> {
  /** Resolves with the final status when the task finishes, or undefined after `stop()`. */
  readonly done: Promise<TaskStatus | undefined>;
  lastSeq: number;
  private readonly emitter = new Emitter<WatchEvents>();
  private readonly buffered: TaskEvent[] = [];
  private wake: (() => void) | undefined;
  private finished = false;
  private settle!: (status: TaskStatus | undefined) => void;
  private fail!: (err: SwitchboardError) => void;

  constructor(
    since: number,
    private readonly cleanup: () => void,
  ) {
    this.lastSeq = since;
    this.done = new Promise((resolve, reject) => {
      this.settle = resolve;
      this.fail = reject;
    });
    this.done.catch(() => undefined);
  }

  on<K extends keyof WatchEvents>(event: K, listener: (value: WatchEvents[K]) => void): () => void {
    return this.emitter.on(event, listener);
  }

  stop(): void {
    this.end(undefined);
  }

  [Symbol.asyncIterator](): AsyncIterator<TaskEvent> {
    return {
      next: async () => {
        for (;;) {
          const event = this.buffered.shift();
          if (event) return { value: event, done: false };
          if (this.finished) return { value: undefined, done: true };
          await new Promise<void>((wake) => (this.wake = wake));
        }
      },
      return: async () => {
        this.stop();
        return { value: undefined, done: true };
      },
    };
  }

  /** @internal Replays and reconnects repeat events: only a new seq counts. */
  push(event: TaskEvent): void {
    if (this.finished || event.seq <= this.lastSeq) return;
    this.lastSeq = event.seq;
    this.buffered.push(event);
    this.wake?.();
    this.emitter.emit("event", event);
    const status = event.type === "status_change" ? event.data.status : undefined;
    if (status && FINAL.has(status)) this.end(status);
  }

  /** @internal */
  error(err: SwitchboardError): void {
    if (this.finished) return;
    this.emitter.emit("error", err);
    this.finished = true;
    this.cleanup();
    this.wake?.();
    this.fail(err);
  }

  private end(status: TaskStatus | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.cleanup();
    this.wake?.();
    this.emitter.emit("end", status);
    this.settle(status);
  }
}

/** The agent task API (`/api/agent…`, docs/TASKS.md). */
export class TaskClient {
  private readonly fetcher: FetchLike;
  private readonly logger: Logger;

  constructor(private readonly options: TaskClientOptions) {
    const fetcher = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (!fetcher) throw new SwitchboardError("unavailable", "no fetch implementation: pass one as options.fetch");
    this.fetcher = fetcher;
    this.logger = resolveLogger(options.logger);
  }

  /** Queues a task; answers the task (`pending`) and its queue position. */
  submit(request: SubmitTask): Promise<{ task: Task; queuePosition: number | null }> {
    return this.call("POST", "/api/agent", request) as Promise<{ task: Task; queuePosition: number | null }>;
  }

  /** The task with its steps, approvals and logs. */
  get(taskId: string): Promise<{ task: Task; steps: unknown[]; approvals: Array<{ id: string; [k: string]: unknown }>; logs: unknown[] }> {
    return this.call("GET", `/api/agent/${encodeURIComponent(taskId)}`) as never;
  }

  approve(taskId: string, decision: ApprovalDecision): Promise<unknown> {
    return this.call("POST", `/api/agent/${encodeURIComponent(taskId)}/approve`, decision);
  }

  cancel(taskId: string): Promise<unknown> {
    return this.call("DELETE", `/api/agent/${encodeURIComponent(taskId)}`);
  }

  undo(taskId: string, stepId?: string): Promise<unknown> {
    return this.call("POST", `/api/agent/${encodeURIComponent(taskId)}/undo`, stepId ? { stepId } : {});
  }

  /** One page of events after `since`, waiting up to `waitMs` for the first. */
  events(taskId: string, since = 0, waitMs = 0): Promise<{ events: TaskEvent[]; lastSeq: number; recovered: boolean }> {
    return this.call("GET", `/api/agent/${encodeURIComponent(taskId)}/events?since=${since}&wait=${waitMs}`) as never;
  }

  /** Follows a task's events: the updates socket, or the events long-poll without WebSockets. */
  watch(taskId: string, options: WatchOptions = {}): TaskWatch {
    const Ctor = this.options.WebSocket ?? (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    const transport = options.transport ?? "auto";
    if (transport === "socket" && !Ctor) throw new SwitchboardError("unavailable", "no WebSocket implementation");
    return Ctor && transport !== "poll" ? this.watchSocket(taskId, options, Ctor) : this.watchPoll(taskId, options);
  }

  private watchSocket(taskId: string, options: WatchOptions, Ctor: SocketConstructor): TaskWatch {
    const url = `${this.options.baseUrl.replace(/^http/, "ws").replace(/\/$/, "")}/api/agent/${encodeURIComponent(taskId)}/updates`;
    const client = new WebSocketClient({
      url,
      token: this.options.token,
      WebSocket: Ctor,
      // Every connection replays the task's history; seqs make the repeats harmless.
      storage: memoryStorage(),
      logger: this.logger,
    });
    const watch = new TaskWatch(options.since ?? 0, () => client.dispose());
    client.bus.on("task.event", (frame: Envelope) => {
      if (typeof frame.seq === "number") watch.push({ ...(frame.payload as Omit<TaskEvent, "seq">), seq: frame.seq });
    });
    // Closed for good (refused token, not the task's owner: 4000 / 1008, or out of retries).
    client.on("state", ({ to, reason }) => {
      if (to === "closed") watch.error(new SwitchboardError("disconnected", reason ?? "the updates socket closed"));
    });
    client.connect().catch(() => undefined);
    return watch;
  }

  private watchPoll(taskId: string, options: WatchOptions): TaskWatch {
    let stopped = false;
    const watch = new TaskWatch(options.since ?? 0, () => (stopped = true));
    const loop = async () => {
      let failures = 0;
      while (!stopped) {
        try {
          const page = await this.events(taskId, watch.lastSeq, options.waitMs ?? 25_000);
          failures = 0;
          for (const event of page.events) watch.push(event);
        } catch (err) {
          const error = err instanceof SwitchboardError ? err : new SwitchboardError("unavailable", String(err));
          if (error.code !== "unavailable" || ++failures > 5) return watch.error(error);
          await new Promise((resolve) => setTimeout(resolve, Math.min(30_000, 500 * 2 ** failures)));
        }
      }
    };
    void loop();
    return watch;
  }

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let response: Awaited<ReturnType<FetchLike>>;
    try {
      response = await this.fetcher(`${this.options.baseUrl.replace(/\/$/, "")}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new SwitchboardError("unavailable", `${method} ${path}: ${String(err)}`);
    }
    const json = (await response.json().catch(() => undefined)) as
      | { success?: boolean; data?: unknown; error?: { code: string; message: string } }
      | undefined;
    if (!response.ok) {
      const code = json?.error?.code ?? (response.status >= 500 ? "unavailable" : "bad_request");
      throw new SwitchboardError(code, json?.error?.message ?? `${method} ${path} answered ${response.status}`);
    }
    return json?.data;
  }
}
