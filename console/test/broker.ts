// The browser tests' broker: clients/ts's test harness, with the console on and the calls the
// console tests make.
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Broker as BaseBroker, BROKER_BIN } from "../../clients/ts/test/integration/broker.js";

export { API_KEY, waitFor } from "../../clients/ts/test/integration/broker.js";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../..");
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/**
 * Whether the browser tests can run. A missing chromium or broker binary skips them with a
 * message, unless SWITCHBOARD_REQUIRE_BROWSER=1, which makes that a failure.
 */
export function missingPrerequisites(): string | undefined {
  const missing: string[] = [];
  if (!existsSync(CHROMIUM)) missing.push(`chromium not found at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`);
  if (!existsSync(BROKER_BIN)) missing.push(`switchboard binary not found at ${BROKER_BIN} (cargo build --bin switchboard, or set SWITCHBOARD_BIN)`);
  return missing.length ? missing.join("; ") : undefined;
}

/** A broker with the console on, and webhooks allowed to the test's loopback receiver. */
export function startBroker(): Promise<Broker> {
  return Broker.start({ console: ["enabled = true"], webhooks: ['mode = "development"', 'allow = ["127.0.0.1/32"]'] });
}

export class Broker extends BaseBroker {
  /** An admin JWT that may also join and publish to every room (what the console's live view needs). */
  adminToken(sub = "ops"): string {
    return this.token(sub, ["*"], true);
  }

  /** A plain user's token (not admin). */
  userToken(sub: string): string {
    return this.token(sub, ["*"]);
  }

  /** `POST /api/rooms/{room}/publish` with the API key, as `curl` would. */
  async publish(room: string, payload: unknown): Promise<number> {
    const { status, json } = await this.api("POST", `/api/rooms/${encodeURIComponent(room)}/publish`, { payload });
    if (status !== 200) throw new Error(`publish to ${room}: HTTP ${status} ${JSON.stringify(json)}`);
    return json.seq as number;
  }

  async metric(name: string): Promise<number | undefined> {
    const text = await (await fetch(`${this.http}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.slice(name.length + 1));
  }
}
