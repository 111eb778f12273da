// A real broker process for tests (this package's integration tests, and the console's
// browser tests, which extend it): a free loopback port, a config file of its own, tokens
// from `switchboard token`, graceful stop, kill -9 and respawn on the same port.
import { spawn, execFileSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BROKER_BIN = resolve(process.env.SWITCHBOARD_BIN ?? join(here, "../../../../target/debug/switchboard"));
export const API_KEY = "client-ts-test-api-key-0123456789";
const SECRET = "client-ts-test-secret-0123456789abcdef";
const STARTUP_MS = 15_000;

/** Whether the integration suite can run; with SWITCHBOARD_REQUIRE_BROKER=1 a missing binary is an error. */
export function brokerAvailable(): boolean {
  if (existsSync(BROKER_BIN)) return true;
  const hint = `switchboard binary not found at ${BROKER_BIN} (build it with \`cargo build --bin switchboard\` or set SWITCHBOARD_BIN)`;
  if (process.env.SWITCHBOARD_REQUIRE_BROKER === "1") throw new Error(`SWITCHBOARD_REQUIRE_BROKER=1 but ${hint}`);
  console.warn(`SKIP integration tests: ${hint}`);
  return false;
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolvePort(address.port) : reject(new Error("no port"))));
    });
  });
}

/** Polls `check` until it returns true, at most `timeoutMs`; the interval only paces the polling. */
export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Config lines by section (`"webhooks"`: `['mode = "development"']`), added to the defaults. */
export type ExtraConfig = Record<string, string[]>;

/** A real broker process on a loopback port, configured by a file of its own. */
export class Broker {
  private child: ChildProcess | undefined;
  private log = "";
  readonly dir = mkdtempSync(join(tmpdir(), "switchboard-ts-"));
  readonly configPath = join(this.dir, "switchboard.toml");

  constructor(
    readonly port: number,
    extra: ExtraConfig = {},
  ) {
    const sections: ExtraConfig = {
      // permessage-deflate on, as a public deployment would have it: Node's `ws` and
      // Chromium offer it, so these tests read and write compressed frames.
      server: [`bind = "127.0.0.1:${port}"`, "workers = 1", 'drain_delay = "0s"', 'shutdown_timeout = "2s"', "permessage_deflate = true"],
      auth: [`hs256_secret = "${SECRET}"`],
      api: [`keys = ["${API_KEY}"]`],
      webhooks: ['outbox_path = ""'],
      tasks: ['sqlite_path = ""', 'worker_subjects = ["worker-*"]'],
    };
    for (const [section, lines] of Object.entries(extra)) sections[section] = [...(sections[section] ?? []), ...lines];
    const toml = Object.entries(sections).flatMap(([section, lines]) => [`[${section}]`, ...lines]);
    writeFileSync(this.configPath, [...toml, ""].join("\n"));
  }

  /** A broker (of the class it is called on) with the default config plus `extra`. */
  static async start<B extends Broker>(
    this: new (port: number, extra: ExtraConfig) => B,
    extra: ExtraConfig = {},
  ): Promise<B> {
    const broker = new this(await freePort(), extra);
    await broker.spawn();
    return broker;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get ws(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** A JWT from `switchboard token` for `sub` on `rooms` (`admin`: `--admin`). */
  token(sub: string, rooms: string[] = [], admin = false): string {
    const args = ["token", "--config", this.configPath, "--sub", sub, "--ttl", "10m"];
    for (const room of rooms) args.push("--room", room);
    if (admin) args.push("--admin");
    return execFileSync(BROKER_BIN, args, { env: cleanEnv(), encoding: "utf8" }).trim();
  }

  async api(method: string, path: string, body?: unknown, bearer = API_KEY): Promise<{ status: number; json: any }> {
    const response = await fetch(`${this.http}${path}`, {
      method,
      headers: { authorization: `Bearer ${bearer}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, json: await response.json().catch(() => undefined) };
  }

  /** SIGTERM: the graceful shutdown that closes sessions with 1012. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill("SIGTERM");
    const killer = setTimeout(() => child.kill("SIGKILL"), STARTUP_MS);
    await exited;
    clearTimeout(killer);
  }

  /** A graceful stop, then a new process on the same port and config (memory state is gone). */
  async restart(): Promise<void> {
    await this.stop();
    await this.spawn();
  }

  /** SIGKILL: the sockets drop without a close frame, and everything in memory is gone. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill("SIGKILL");
    await exited;
  }

  /** kill -9, then a new process on the same port and config. */
  async respawn(): Promise<void> {
    await this.kill();
    await this.spawn();
  }

  async close(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  logTail(): string {
    return this.log.split("\n").slice(-40).join("\n");
  }

  protected async spawn(): Promise<void> {
    const child = spawn(BROKER_BIN, ["serve", "--config", this.configPath], { env: cleanEnv(), stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    child.stdout?.on("data", (d) => (this.log += String(d)));
    child.stderr?.on("data", (d) => (this.log += String(d)));
    await waitFor(
      `GET /healthz on port ${this.port}`,
      async () => {
        if (child.exitCode !== null) throw new Error(`the broker exited during start-up:\n${this.logTail()}`);
        try {
          return (await fetch(`${this.http}/healthz`)).status === 200;
        } catch {
          return false;
        }
      },
      STARTUP_MS,
    );
  }
}

/** Only the config file configures the broker (no SWITCHBOARD_* from the caller's shell). */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("SWITCHBOARD_")));
}
