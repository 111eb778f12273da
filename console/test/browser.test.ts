// The web console in real (headless) Chromium against the real broker binary: login, the
// room list and a room's live stream, a broker restart seen through the status indicator
// with no message lost, and two tabs sharing one WebSocket. Screenshots go to
// target/browser-artifacts/.
//
// Without chromium or the broker binary the tests are skipped with a message, unless
// SWITCHBOARD_REQUIRE_BROWSER=1, which makes that a failure.
import { mkdirSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { chromium } from "playwright-core";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { API_KEY, Broker, CHROMIUM, missingPrerequisites, REPO, startBroker, waitFor } from "./broker.js";

const ARTIFACTS = join(REPO, "target/browser-artifacts");
const UI_WAIT = 15_000;

const missing = missingPrerequisites();
if (missing && process.env.SWITCHBOARD_REQUIRE_BROWSER === "1") {
  throw new Error(`SWITCHBOARD_REQUIRE_BROWSER=1 but ${missing}`);
}
if (missing) console.warn(`SKIP browser tests: ${missing}`);

describe.skipIf(Boolean(missing))("web console in Chromium", () => {
  let browser: Browser;
  let broker: Broker | undefined;
  const contexts: BrowserContext[] = [];

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Chromium's sandbox needs user namespaces, which root in a container usually lacks.
      args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
    });
  });

  afterAll(async () => {
    await browser?.close();
  });

  afterEach(async (ctx) => {
    for (const context of contexts.splice(0)) await context.close();
    if (ctx.task.result?.state === "fail" && broker) console.error(`broker log:\n${broker.logTail()}`);
    await broker?.close();
    broker = undefined;
  });

  async function newContext(): Promise<BrowserContext> {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    contexts.push(context);
    return context;
  }

  async function logIn(page: Page, b: Broker, credential: string): Promise<void> {
    await page.goto(`${b.http}/console/`);
    await page.fill("#credential", credential);
    await page.click("#login");
    await page.waitForSelector("#nav:not([hidden])", { timeout: UI_WAIT });
  }

  /** The payloads' `text` of the messages on screen, in order. */
  async function shownTexts(page: Page): Promise<string[]> {
    return page.$$eval("#messages li.msg pre.payload", (items) => items.map((item) => JSON.parse(item.textContent ?? "null")?.text as string));
  }

  async function waitForTexts(page: Page, want: string[]): Promise<void> {
    try {
      await page.waitForFunction(
        (n) => document.querySelectorAll("#messages li.msg").length >= n,
        want.length,
        { timeout: UI_WAIT },
      );
    } catch (err) {
      throw new Error(`the page shows ${JSON.stringify(await shownTexts(page))}, want ${JSON.stringify(want)}: ${String(err)}`);
    }
    expect(await shownTexts(page)).toEqual(want);
  }

  async function sessions(b: Broker): Promise<Array<{ connection_id: string; user: string }>> {
    const { status, json } = await b.api("GET", "/api/sessions");
    expect(status).toBe(200);
    return json.sessions;
  }

  it("logs in and shows a room's messages published over HTTP", async () => {
    broker = await startBroker();
    const b = broker;
    for (const text of ["one", "two", "three"]) await b.publish("demo:1", { text });
    const page = await (await newContext()).newPage();
    await page.goto(`${b.http}/console/`);
    await page.waitForSelector("#credential");
    await page.screenshot({ path: join(ARTIFACTS, "login.png") });

    // A wrong credential is refused by the API and the page says so.
    await page.fill("#credential", "not-a-key-0123456789");
    await page.click("#login");
    await page.waitForFunction(() => /401/.test(document.getElementById("login-error")?.textContent ?? ""), undefined, { timeout: UI_WAIT });
    expect(await page.isHidden("#nav")).toBe(true);

    await page.fill("#credential", b.adminToken());
    await page.click("#login");
    await page.waitForSelector('#room-table a[data-room="demo:1"]', { timeout: UI_WAIT });
    // The status element and its dot: connected over the shared WebSocket.
    await page.waitForSelector('switchboard-status[state="connected"]', { timeout: UI_WAIT });
    await page.waitForSelector('#health[data-level="green"]', { timeout: UI_WAIT });
    expect(await page.textContent("#who")).toBe("admin:ops");
    // The rate column fills in from the second poll on.
    await page.waitForFunction(() => !document.querySelector("#room-table tbody td:last-child")?.textContent?.includes("…"), undefined, { timeout: UI_WAIT });
    // Messages between two polls show as a rate, from the room's seq.
    for (const text of ["four", "five"]) await b.publish("demo:1", { text });
    await page.waitForFunction(
      () => {
        const cells = [...document.querySelectorAll("#room-table tbody tr")]
          .find((row) => row.querySelector('[data-room="demo:1"]'))
          ?.querySelectorAll("td");
        return cells !== undefined && cells[2]?.textContent === "5" && Number(cells[3]?.textContent) > 0;
      },
      undefined,
      { timeout: UI_WAIT },
    );
    await page.screenshot({ path: join(ARTIFACTS, "rooms.png") });

    await page.click('#room-table a[data-room="demo:1"]');
    await waitForTexts(page, ["one", "two", "three", "four", "five"]);
    await b.publish("demo:1", { text: "six" });
    await waitForTexts(page, ["one", "two", "three", "four", "five", "six"]);

    // The publish box goes through the client's WebSocket.
    await page.fill("#payload", '{"text":"seven"}');
    await page.click("#publish");
    await page.waitForFunction(() => /seq 7/.test(document.getElementById("publish-result")?.textContent ?? ""), undefined, { timeout: UI_WAIT });
    await waitForTexts(page, ["one", "two", "three", "four", "five", "six", "seven"]);
    const history = await b.api("GET", "/api/rooms/demo:1/history");
    expect(history.json.messages.map((m: any) => m.payload.text)).toEqual(["one", "two", "three", "four", "five", "six", "seven"]);
    expect(await page.isHidden("#recovered")).toBe(true);
    await page.screenshot({ path: join(ARTIFACTS, "room.png") });

    // Sessions: the console's own socket is listed and marked.
    await page.click('a[href="#/sessions"]');
    await page.waitForSelector("#session-table", { timeout: UI_WAIT });
    expect(await page.textContent("#session-table")).toContain("this console");

    // The data needs the credential; the page itself does not.
    expect((await fetch(`${b.http}/api/rooms`)).status).toBe(401);
    expect((await fetch(`${b.http}/console/`)).status).toBe(200);
  });

  it("goes red, amber, then green across a broker restart and loses no message", async () => {
    broker = await startBroker();
    const b = broker;
    const page = await (await newContext()).newPage();
    await logIn(page, b, b.adminToken());
    await page.goto(`${b.http}/console/#/room/restart:1`);
    await page.waitForSelector('#health[data-level="green"]', { timeout: UI_WAIT });
    await page.waitForFunction(() => /joined/.test(document.getElementById("join-info")?.textContent ?? ""), undefined, { timeout: UI_WAIT });
    for (const text of ["before-1", "before-2", "before-3"]) await b.publish("restart:1", { text });
    await waitForTexts(page, ["before-1", "before-2", "before-3"]);

    // Every level the dot takes from now on, in order.
    await page.evaluate(() => {
      const health = document.getElementById("health")!;
      const levels: string[] = [];
      (window as unknown as { levels: string[] }).levels = levels;
      new MutationObserver(() => levels.push(health.dataset.level ?? "")).observe(health, { attributes: true, attributeFilter: ["data-level"] });
    });
    await b.kill();
    await page.waitForSelector('#health[data-level="red"]', { timeout: UI_WAIT });
    // Let the backoff grow, so the client's next attempt is seconds away when the broker is
    // back: the page must notice the broker first (amber), then reconnect (green).
    await page.waitForFunction(
      () => {
        const match = /reconnecting in (\d+) s/.exec(document.querySelector("switchboard-status")?.textContent ?? "");
        return match !== null && Number(match[1]) >= 3;
      },
      undefined,
      { timeout: 30_000 },
    );
    await b.respawn();
    // Published while the page is still away: the restarted room's seq (1) is below the
    // page's (3), which tells the client the room restarted, so it replays from 0.
    await b.publish("restart:1", { text: "during" });
    await page.waitForSelector('#health[data-level="amber"]', { timeout: UI_WAIT });
    await page.waitForSelector('#health[data-level="green"]', { timeout: 30_000 });
    await page.waitForSelector('#messages li.recovery[data-reset="true"]', { timeout: UI_WAIT });
    for (const text of ["after-1", "after-2"]) await b.publish("restart:1", { text });
    await waitForTexts(page, ["before-1", "before-2", "before-3", "during", "after-1", "after-2"]);
    expect(await page.textContent("#recovered")).toContain("recovered: false");
    // The notice sits where the loss happened: after the old room's messages.
    const order = await page.$$eval("#messages li", (items) => items.map((li) => (li.classList.contains("recovery") ? "RECOVERY" : JSON.parse(li.querySelector("pre")?.textContent ?? "null")?.text)));
    expect(order).toEqual(["before-1", "before-2", "before-3", "RECOVERY", "during", "after-1", "after-2"]);

    const levels = await page.evaluate(() => (window as unknown as { levels: string[] }).levels);
    const red = levels.indexOf("red");
    const amber = levels.indexOf("amber", red);
    const green = levels.indexOf("green", amber);
    expect({ levels, ordered: red >= 0 && amber > red && green > amber }).toEqual({ levels, ordered: true });
    await page.screenshot({ path: join(ARTIFACTS, "after-restart.png") });
  });

  it("shares one WebSocket between two tabs and hands it over when the leader closes", async () => {
    broker = await startBroker();
    const b = broker;
    const context = await newContext();
    const token = b.adminToken();
    const first = await context.newPage();
    await logIn(first, b, token);
    await first.goto(`${b.http}/console/#/room/shared:1`);
    await first.waitForSelector('#health[data-level="green"]', { timeout: UI_WAIT });
    // The first tab asked for the lock first, so it leads.
    const second = await context.newPage();
    await logIn(second, b, token);
    await second.goto(`${b.http}/console/#/room/shared:1`);
    for (const page of [first, second]) {
      await page.waitForSelector('#health[data-level="green"]', { timeout: UI_WAIT });
      await page.waitForFunction(() => /joined/.test(document.getElementById("join-info")?.textContent ?? ""), undefined, { timeout: UI_WAIT });
    }

    // Both tabs connected, one socket at the broker.
    const before = await sessions(b);
    expect(before.map((s) => s.user)).toEqual(["ops"]);
    expect(await b.metric("switchboard_connections")).toBe(1);

    for (const text of ["x1", "x2", "x3"]) await b.publish("shared:1", { text });
    await waitForTexts(first, ["x1", "x2", "x3"]);
    await waitForTexts(second, ["x1", "x2", "x3"]);

    // The leader's tab goes: the other one opens the socket and keeps the room.
    await first.close();
    await waitFor(
      "the second tab's own socket",
      async () => {
        const now = await sessions(b);
        return now.length === 1 && now[0]!.connection_id !== before[0]!.connection_id;
      },
      UI_WAIT,
    );
    await second.waitForSelector('#health[data-level="green"]', { timeout: UI_WAIT });
    await b.publish("shared:1", { text: "x4" });
    await waitForTexts(second, ["x1", "x2", "x3", "x4"]);
    expect(await b.metric("switchboard_connections")).toBe(1);
  });

  it("shows live rooms with an API key by polling history", async () => {
    broker = await startBroker();
    const b = broker;
    const page = await (await newContext()).newPage();
    await logIn(page, b, API_KEY);
    expect(await page.textContent("#who")).toBe("API key");
    await page.goto(`${b.http}/console/#/room/polled:1`);
    await page.waitForSelector('#health[data-level="green"]', { timeout: UI_WAIT });
    await b.publish("polled:1", { text: "p1" });
    await b.publish("polled:1", { text: "p2" });
    await waitForTexts(page, ["p1", "p2"]);
    // Polling opens no WebSocket.
    expect(await sessions(b)).toEqual([]);
  });

  it("disconnects a session, replays a dead letter, charts metrics and lists tasks", async () => {
    broker = await startBroker();
    const b = broker;
    // A webhook receiver that refuses (401: not retried, straight to the dead-letter queue)
    // until told otherwise.
    let answer = 401;
    const received: number[] = [];
    const receiver = createServer((req, res) => {
      req.resume();
      received.push(answer);
      res.statusCode = answer;
      res.end(answer === 401 ? "wrong secret" : "");
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
    try {
      const port = (receiver.address() as AddressInfo).port;
      const created = await b.api("POST", "/api/webhooks", { url: `http://127.0.0.1:${port}/hook`, events: ["room.message"], rooms: ["hooks:*"] });
      expect(created.status).toBe(201);
      const endpoint = created.json.id as string;
      await b.publish("hooks:1", { text: "to the hook" });

      const page = await (await newContext()).newPage();
      await logIn(page, b, b.adminToken());
      await page.waitForSelector('#health[data-level="green"]', { timeout: UI_WAIT });

      // Sessions: a user's socket opened in the page, disconnected with the button.
      await page.evaluate((url) => {
        const socket = new WebSocket(url);
        (window as unknown as { victimClosed: Promise<number> }).victimClosed = new Promise((r) => socket.addEventListener("close", (e) => r(e.code)));
      }, `ws://127.0.0.1:${b.port}/ws?token=${b.userToken("victim")}`);
      await page.goto(`${b.http}/console/#/sessions`);
      const victim = await page.waitForSelector("#session-table tr:has-text('victim') button[data-disconnect]", { timeout: UI_WAIT });
      await victim.click();
      expect(await page.evaluate(() => (window as unknown as { victimClosed: Promise<number> }).victimClosed)).toBe(1008);
      await page.waitForFunction(() => !document.querySelector("#session-table")?.textContent?.includes("victim"), undefined, { timeout: UI_WAIT });
      expect((await sessions(b)).map((s) => s.user)).toEqual(["ops"]);

      // Webhooks: the failed delivery is in the DLQ; after the receiver is fixed, Replay
      // delivers it.
      await page.goto(`${b.http}/console/#/webhooks`);
      await page.waitForSelector(`#endpoint-table [data-endpoint="${endpoint}"]`, { timeout: UI_WAIT });
      const replay = await page.waitForSelector("#dlq-table button[data-replay]", { timeout: UI_WAIT });
      expect(await page.textContent("#dlq-table")).toContain("HTTP 401");
      answer = 204;
      await replay.click();
      await page.waitForFunction(() => /pending again/.test(document.getElementById("webhook-note")?.textContent ?? ""), undefined, { timeout: UI_WAIT });
      await page.click(`[data-endpoint="${endpoint}"]`);
      await page.waitForFunction(() => document.getElementById("deliveries")?.textContent?.includes("delivered") ?? false, undefined, { timeout: UI_WAIT });
      await page.waitForFunction(() => /empty/.test(document.getElementById("dlq")?.textContent ?? ""), undefined, { timeout: UI_WAIT });
      expect(received).toEqual([401, 204]);
      await page.screenshot({ path: join(ARTIFACTS, "webhooks.png") });

      // Metrics: the charts fill in from /metrics samples.
      await page.goto(`${b.http}/console/#/metrics`);
      await page.waitForFunction(
        () => (document.querySelector('svg[data-metric="deliveries"] polyline')?.getAttribute("points") ?? "").split(" ").length >= 2,
        undefined,
        { timeout: UI_WAIT },
      );
      await page.waitForFunction(() => /connections: 1 /.test(document.querySelector('svg[data-metric="connections"]')?.textContent ?? ""), undefined, { timeout: UI_WAIT });
      await page.screenshot({ path: join(ARTIFACTS, "metrics.png") });

      // Tasks: everyone's, as a system caller.
      const submitted = await b.api("POST", "/api/agent", { task: "tidy the reports", userId: "alice" });
      expect(submitted.status).toBe(201);
      const taskId = submitted.json.data.task.id as string;
      await page.goto(`${b.http}/console/#/tasks`);
      await page.waitForSelector(`#task-table :text("${taskId}")`, { timeout: UI_WAIT });
      expect(await page.textContent("#task-table")).toContain("alice");
    } finally {
      await new Promise((r) => receiver.close(r));
    }
  });
});
