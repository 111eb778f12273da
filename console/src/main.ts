// The switchboard web console: rooms, a room's live messages, sessions, webhooks, metrics
// and tasks, read through the broker's HTTP API with the operator's API key or admin token.
//
// Live room traffic goes through the TypeScript client (clients/ts): with an admin token,
// a SharedClient, so every console tab of this browser shares one WebSocket; with an API
// key (which a WebSocket does not accept), the PollingClient over the history route.

import { createClient, defineStatusElement, PollingClient } from "../../clients/ts/src/index.js";
import type { ConnectionState, RecoveryEvent, RoomMessage, SharedClient, Subscription, WebSocketClient } from "../../clients/ts/src/index.js";
import { Api, ApiError, every, isJwt, jwtSubject, storeCredential, storedCredential } from "./api.js";
import { fill, h, num, table, when } from "./dom.js";
import { lineChart, MetricsHistory } from "./metrics.js";

type LiveClient = SharedClient | WebSocketClient | PollingClient;

interface Login {
  api: Api;
  client: LiveClient;
  metrics: MetricsHistory;
  stop: Array<() => void>;
}

interface Settings {
  ws_path: string;
  version: string;
}

const view = document.getElementById("view")!;
const nav = document.getElementById("nav")!;
const who = document.getElementById("who")!;
const logoutButton = document.getElementById("logout") as HTMLButtonElement;
const health = document.getElementById("health")!;
const status = document.getElementById("status") as HTMLElement & { client?: LiveClient };

let login: Login | undefined;
/** Stops the polling of the view on screen when another view replaces it. */
let leaveView: () => void = () => undefined;

// ---------------------------------------------------------------------------------------
// Login

async function settings(): Promise<Settings> {
  const response = await fetch("settings.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`settings.json: HTTP ${response.status}`);
  return (await response.json()) as Settings;
}

function showLogin(message?: string): void {
  leaveView();
  nav.hidden = true;
  logoutButton.hidden = true;
  fill(who);
  const input = h("input", { id: "credential", type: "password", autocomplete: "off", placeholder: "API key or admin token", "aria-label": "API key or admin token" });
  const error = h("p", { id: "login-error", class: "error", role: "alert" }, message ?? "");
  const form = h(
    "form",
    {},
    h("h2", {}, "Log in"),
    h(
      "p",
      { class: "muted" },
      "An API key from [api] keys, or a JWT with \"admin\": true (switchboard token --admin --sub ops --room '*'). ",
      "It stays in this tab only (sessionStorage). With a token the room view is live over a WebSocket (the token needs room patterns, e.g. \"*\"); with a key it polls history.",
    ),
    input,
    h("button", { type: "submit", id: "login" }, "Log in"),
    error,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const credential = input.value.trim();
    if (!credential) return;
    void start(credential).catch((err: unknown) => {
      error.textContent = describe(err);
    });
  });
  fill(view, h("section", { class: "card login" }, form));
  input.focus();
}

/** Checks the credential against the API, then connects and shows the current view. */
async function start(credential: string): Promise<void> {
  const api = new Api(credential);
  // The API decides: 401 for an unknown key or a bad token, 403 for a token without admin.
  await api.call("GET", "/api/rooms");
  const { ws_path } = await settings();
  storeCredential(credential);
  const client: LiveClient = isJwt(credential)
    ? createClient({
        url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${ws_path}`,
        token: credential,
        shared: true,
        // Console tabs of this origin share one socket; an application on the same origin
        // uses its own name, so the two never mix.
        name: "switchboard-console",
        storageKey: "switchboard-console:resume",
      })
    : new PollingClient({
        baseUrl: location.origin,
        credential,
        intervalMs: 1000,
        storageKey: "switchboard-console:polling",
      });
  const metrics = new MetricsHistory();
  login = { api, client, metrics, stop: [] };
  api.onRefused = (error) => logout(`logged out: ${error.message}`);
  status.client = client;
  login.stop.push(watchHealth(client));
  login.stop.push(
    every(2000, async () => {
      try {
        const response = await fetch("/metrics", { cache: "no-store" });
        metrics.add(await response.text());
        metrics.error = undefined;
      } catch (err) {
        metrics.error = describe(err);
      }
    }),
  );
  void client.connect().catch((err: unknown) => console.warn("switchboard console: connection closed", err));
  nav.hidden = false;
  logoutButton.hidden = false;
  fill(who, isJwt(credential) ? `admin:${jwtSubject(credential) ?? "?"}` : "API key");
  route();
}

function logout(message?: string): void {
  storeCredential(undefined);
  if (login) {
    for (const stop of login.stop) stop();
    login.client.disconnect();
    login = undefined;
  }
  status.client = undefined;
  health.dataset.level = "red";
  showLogin(message);
}

logoutButton.addEventListener("click", () => logout());

/**
 * The coloured dot beside `<switchboard-status>`: green while connected; red while the
 * connection is down and the broker does not answer `/healthz`; amber while on the way back
 * (connecting, or the broker answers but the client's next attempt is still to come).
 */
function watchHealth(client: LiveClient): () => void {
  let brokerAnswers: boolean | undefined;
  let stopProbe: (() => void) | undefined;
  const render = (state: ConnectionState): void => {
    let level: string;
    if (state === "connected") level = "green";
    else if (state === "connecting") level = "amber";
    else if (state === "reconnecting" || state === "paused") level = brokerAnswers === false ? "red" : "amber";
    else level = "red";
    health.dataset.level = level;
  };
  const off = client.on("state", ({ to }) => {
    if (to === "connected") {
      stopProbe?.();
      stopProbe = undefined;
      brokerAnswers = true;
    } else if (!stopProbe && to !== "idle") {
      brokerAnswers = undefined;
      stopProbe = every(500, async () => {
        try {
          brokerAnswers = (await fetch("/healthz", { cache: "no-store" })).ok;
        } catch {
          brokerAnswers = false;
        }
        render(client.state);
      });
    }
    render(to);
  });
  render(client.state);
  return () => {
    off();
    stopProbe?.();
  };
}

function describe(err: unknown): string {
  if (err instanceof ApiError) return `${err.status} ${err.code}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------
// Routing: #/rooms, #/room/<name>, #/sessions, #/webhooks, #/metrics, #/tasks

function route(): void {
  if (!login) return;
  leaveView();
  leaveView = () => undefined;
  const hash = location.hash || "#/rooms";
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", hash.startsWith(link.getAttribute("href") ?? "-"));
  const [, page, ...rest] = hash.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  switch (page) {
    case "room":
      leaveView = roomView(login, arg);
      break;
    case "sessions":
      leaveView = sessionsView(login);
      break;
    case "webhooks":
      leaveView = webhooksView(login);
      break;
    case "metrics":
      leaveView = metricsView(login);
      break;
    case "tasks":
      leaveView = tasksView(login);
      break;
    default:
      leaveView = roomsView(login);
  }
}

window.addEventListener("hashchange", route);

// ---------------------------------------------------------------------------------------
// Rooms

interface RoomInfo {
  room: string;
  members: number;
  seq: number;
}

function roomsView({ api }: Login): () => void {
  const body = h("div", { id: "rooms" }, h("p", { class: "muted" }, "loading…"));
  const open = h("input", { id: "open-room", placeholder: "room name, e.g. conversation:42", "aria-label": "room name" });
  const form = h("form", {}, open, " ", h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (open.value.trim()) location.hash = `#/room/${encodeURIComponent(open.value.trim())}`;
  });
  fill(view, h("section", { class: "card" }, h("h2", {}, "Rooms"), form, h("h3", {}, "Running rooms"), body));
  // Rates come from seq deltas between polls: a seq counts every message of the room.
  let previous = new Map<string, { seq: number; at: number }>();
  return every(2000, async () => {
    try {
      const { rooms } = await api.call<{ rooms: RoomInfo[] }>("GET", "/api/rooms");
      const at = Date.now();
      const rows = rooms.map((r) => {
        const before = previous.get(r.room);
        // A seq below the last one is a room that restarted its numbering.
        const delta = before ? (r.seq >= before.seq ? r.seq - before.seq : r.seq) : undefined;
        const rate = before && delta !== undefined ? delta / Math.max(0.001, (at - before.at) / 1000) : undefined;
        return [h("a", { href: `#/room/${encodeURIComponent(r.room)}`, "data-room": r.room }, r.room), num(r.members), num(r.seq), num(rate === undefined ? "…" : rate.toFixed(1))];
      });
      previous = new Map(rooms.map((r) => [r.room, { seq: r.seq, at }]));
      fill(body, rooms.length ? table(["room", ["members", "num"], ["seq", "num"], ["msgs/s", "num"]], rows, { id: "room-table" }) : h("p", { class: "muted" }, "No rooms are running."));
    } catch (err) {
      fill(body, h("p", { class: "error" }, describe(err)));
    }
  });
}

// ---------------------------------------------------------------------------------------
// One room: presence, the live stream, a publish box

const MAX_SHOWN = 500;

function roomView({ api, client }: Login, room: string): () => void {
  const messages = h("ol", { class: "messages", id: "messages", "aria-live": "polite" });
  const banner = h("div", { id: "recovered", hidden: true, class: "banner" });
  const joinInfo = h("p", { class: "muted", id: "join-info" }, "joining…");
  const presence = h("div", { id: "presence" }, h("p", { class: "muted" }, "loading…"));
  const payload = h("textarea", { id: "payload", "aria-label": "payload (JSON, or text)", placeholder: '{"text": "hello"} or plain text' });
  const result = h("p", { id: "publish-result", class: "muted" });
  const form = h("form", { class: "publish" }, payload, h("button", { type: "submit", id: "publish" }, "Publish"), result);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = payload.value.trim();
    if (!text) return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = { text };
    }
    result.className = "muted";
    result.textContent = "publishing…";
    client.publish(room, value).then(
      (ack) => {
        result.className = "ok";
        result.textContent = `published: seq ${ack.seq}${ack.duplicate ? " (duplicate)" : ""}`;
        payload.value = "";
      },
      (err: unknown) => {
        result.className = "error";
        result.textContent = describe(err);
      },
    );
  });
  fill(
    view,
    h("h2", {}, "Room ", h("code", { id: "room-name" }, room)),
    h(
      "div",
      { class: "room-layout" },
      h("section", { class: "card" }, h("h3", {}, "Messages"), banner, joinInfo, messages),
      h("div", {}, h("section", { class: "card" }, h("h3", {}, "Presence"), presence), h("section", { class: "card" }, h("h3", {}, "Publish"), form)),
    ),
  );

  // Everything the room still keeps, then live traffic; the client delivers each seq once.
  const subscription: Subscription = client.subscribe(room, { sinceSeq: 0 });
  const offs = [
    subscription.on("message", (m: RoomMessage) => {
      messages.append(
        h(
          "li",
          { class: "msg", "data-seq": m.seq, "data-id": m.id },
          h("span", { class: "mono" }, `#${m.seq}`),
          h("span", { class: "muted", title: m.timestamp ?? "" }, m.timestamp ? new Date(m.timestamp).toLocaleTimeString() : ""),
          h("pre", { class: "payload" }, (m.type !== "room.message" ? `${m.type} ` : "") + JSON.stringify(m.payload)),
        ),
      );
      while (messages.children.length > MAX_SHOWN) messages.firstElementChild?.remove();
      messages.scrollTop = messages.scrollHeight;
    }),
    subscription.on("joined", (info) => {
      joinInfo.textContent = `joined at seq ${info.seq}`;
    }),
    subscription.on("recovery", (event: RecoveryEvent) => {
      const text = event.reset
        ? `recovered: false — the room restarted at seq ${event.seq} (the broker lost its history, e.g. a restart): messages after #${event.sinceSeq} that the old room had are lost; numbering starts again`
        : `recovered: false — messages after #${event.sinceSeq} had left the history before they could be replayed`;
      messages.append(h("li", { class: "recovery", "data-reset": String(event.reset) }, text));
      banner.hidden = false;
      banner.textContent = "recovered: false — some messages of this room could not be recovered; see the stream below";
    }),
    subscription.on("error", (err: unknown) => {
      joinInfo.className = "error";
      joinInfo.textContent = describe(err);
    }),
  ];
  subscription.ready.catch((err: unknown) => {
    joinInfo.className = "error";
    joinInfo.textContent = `cannot join: ${describe(err)}`;
  });

  const stopPresence = every(3000, async () => {
    try {
      const { presence: people } = await api.call<{ presence: Array<{ user: string; connections: number; joined_at: string }> }>(
        "GET",
        `/api/rooms/${encodeURIComponent(room)}/presence`,
      );
      fill(presence, people.length ? table(["user", ["conns", "num"]], people.map((p) => [p.user, num(p.connections)])) : h("p", { class: "muted" }, "nobody"));
    } catch (err) {
      const off = err instanceof ApiError && err.code === "conflict";
      fill(presence, h("p", { class: off ? "muted" : "error" }, off ? "Presence is off for this room's namespace." : describe(err)));
    }
  });
  return () => {
    stopPresence();
    for (const off of offs) off();
    subscription.unsubscribe();
  };
}

// ---------------------------------------------------------------------------------------
// Sessions

interface SessionRow {
  connection_id: string;
  user: string;
  connected_at: string;
}

function sessionsView({ api, client }: Login): () => void {
  const body = h("div", { id: "sessions" }, h("p", { class: "muted" }, "loading…"));
  const note = h("p", { class: "muted", id: "sessions-note" });
  fill(view, h("section", { class: "card" }, h("h2", {}, "Sessions"), h("p", { class: "muted" }, "Live WebSocket sessions on this node. Disconnecting closes the socket with 1008; the client may reconnect with a valid token."), note, body));
  const refresh = async (): Promise<void> => {
    try {
      const { sessions, total } = await api.call<{ sessions: SessionRow[]; total: number }>("GET", "/api/sessions?limit=1000");
      note.textContent = `${total} session${total === 1 ? "" : "s"}`;
      const mine = (client as { connectionId?: string }).connectionId;
      const rows = sessions.map((s) => [
        h("code", {}, s.connection_id),
        s.user,
        when(s.connected_at),
        s.connection_id === mine
          ? h("span", { class: "muted" }, "this console")
          : h(
              "button",
              {
                type: "button",
                class: "danger",
                "data-disconnect": s.connection_id,
                onclick: () => {
                  api.call("DELETE", `/api/sessions/${encodeURIComponent(s.connection_id)}?reason=${encodeURIComponent("disconnected from the console")}`).then(
                    () => refresh(),
                    (err: unknown) => (note.textContent = describe(err)),
                  );
                },
              },
              "Disconnect",
            ),
      ]);
      fill(body, sessions.length ? table(["connection id", "user", "connected", ""], rows, { id: "session-table" }) : h("p", { class: "muted" }, "No sessions."));
    } catch (err) {
      fill(body, h("p", { class: "error" }, describe(err)));
    }
  };
  return every(3000, refresh);
}

// ---------------------------------------------------------------------------------------
// Webhooks: endpoints, deliveries of one, the dead-letter queue with replay

interface Endpoint {
  id: string;
  url: string;
  events: string[];
  rooms: string[];
  enabled: boolean;
  disabled_reason: string | null;
  pending: number;
  source: string;
}

interface Delivery {
  id: string;
  endpoint_id: string;
  seq: number;
  event_type: string;
  state: string;
  attempts: number;
  created_at: number;
  last_status: number | null;
  last_error: string | null;
}

function webhooksView({ api }: Login): () => void {
  const endpoints = h("div", { id: "endpoints" }, h("p", { class: "muted" }, "loading…"));
  const deliveries = h("div", { id: "deliveries" }, h("p", { class: "muted" }, "Pick an endpoint to see its deliveries."));
  const dlq = h("div", { id: "dlq" }, h("p", { class: "muted" }, "loading…"));
  const note = h("p", { id: "webhook-note", role: "status", class: "muted" });
  fill(
    view,
    h("section", { class: "card" }, h("h2", {}, "Webhook endpoints"), endpoints),
    h("section", { class: "card" }, h("h3", {}, "Deliveries"), deliveries),
    h("section", { class: "card" }, h("h3", {}, "Dead-letter queue"), note, dlq),
  );
  let selected: string | undefined;
  const deliveryRows = (list: Delivery[], replay: boolean): Array<Array<Node | string | number>> =>
    list.map((d) => {
      const row: Array<Node | string | number> = [
        h("code", {}, d.id),
        d.event_type,
        h("span", { class: `pill ${d.state}` }, d.state),
        num(d.attempts),
        d.last_error ?? (d.last_status === null ? "" : `HTTP ${d.last_status}`),
        when(d.created_at),
      ];
      if (replay) {
        row.push(
          h(
            "button",
            {
              type: "button",
              "data-replay": d.id,
              onclick: () => {
                api.call<Delivery>("POST", `/api/webhooks/dlq/${encodeURIComponent(d.id)}/replay`).then(
                  (answer) => {
                    note.textContent = `${answer.id} is ${answer.state} again`;
                    void refresh();
                  },
                  (err: unknown) => (note.textContent = describe(err)),
                );
              },
            },
            "Replay",
          ),
        );
      }
      return row;
    });
  const refresh = async (): Promise<void> => {
    try {
      const { endpoints: list } = await api.call<{ endpoints: Endpoint[] }>("GET", "/api/webhooks");
      const rows = list.map((e) => [
        h(
          "a",
          {
            href: "#/webhooks",
            "data-endpoint": e.id,
            onclick: (event: Event) => {
              event.preventDefault();
              selected = e.id;
              void refresh();
            },
          },
          e.id,
        ),
        e.url,
        e.events.join(", "),
        h("span", { class: `pill ${e.enabled ? "enabled" : "disabled"}`, title: e.disabled_reason ?? "" }, e.enabled ? "enabled" : "disabled"),
        num(e.pending),
      ]);
      fill(endpoints, list.length ? table(["id", "url", "events", "state", ["pending", "num"]], rows, { id: "endpoint-table" }) : h("p", { class: "muted" }, "No endpoints."));
      for (const row of endpoints.querySelectorAll("tbody tr")) row.classList.toggle("selected", row.querySelector(`[data-endpoint="${selected}"]`) !== null);
    } catch (err) {
      fill(endpoints, h("p", { class: "error" }, describe(err)));
    }
    if (selected) {
      try {
        const { deliveries: list } = await api.call<{ deliveries: Delivery[] }>("GET", `/api/webhooks/${encodeURIComponent(selected)}/deliveries?limit=50`);
        fill(deliveries, h("p", { class: "muted" }, `Endpoint ${selected}, newest first`), list.length ? table(["delivery", "event", "state", ["attempts", "num"], "last answer", "created"], deliveryRows(list, false)) : h("p", { class: "muted" }, "No deliveries."));
      } catch (err) {
        fill(deliveries, h("p", { class: "error" }, describe(err)));
      }
    }
    try {
      const { deliveries: list } = await api.call<{ deliveries: Delivery[] }>("GET", "/api/webhooks/dlq?limit=100");
      fill(dlq, list.length ? table(["delivery", "event", "state", ["attempts", "num"], "last answer", "created", ""], deliveryRows(list, true), { id: "dlq-table" }) : h("p", { class: "muted" }, "The dead-letter queue is empty."));
    } catch (err) {
      fill(dlq, h("p", { class: "error" }, describe(err)));
    }
  };
  return every(5000, refresh);
}

// ---------------------------------------------------------------------------------------
// Metrics

function metricsView({ metrics }: Login): () => void {
  const charts = h("div", { class: "charts", id: "charts" });
  const note = h("p", { class: "muted" });
  fill(view, h("section", { class: "card" }, h("h2", {}, "Metrics"), h("p", { class: "muted" }, "From /metrics every 2 s since this console logged in (at most the last 5 minutes)."), note, charts));
  const render = (): void => {
    note.textContent = metrics.error ? `last scrape failed: ${metrics.error}` : `${metrics.samples.length} samples`;
    fill(
      charts,
      lineChart("connections", metrics.gauge("connections"), ""),
      lineChart("deliveries", metrics.rate("deliveries"), "/s"),
      lineChart("messages published", metrics.rate("published"), "/s"),
      lineChart("slow-consumer closes", metrics.rate("slowCloses"), "/s"),
    );
  };
  render();
  const timer = setInterval(render, 2000);
  return () => clearInterval(timer);
}

// ---------------------------------------------------------------------------------------
// Tasks

interface TaskRow {
  id: string;
  status: string;
  owner?: string;
  task?: string;
  priority?: number;
  createdAt?: number;
  error?: string | null;
}

function tasksView({ api }: Login): () => void {
  const body = h("div", { id: "tasks" }, h("p", { class: "muted" }, "loading…"));
  fill(view, h("section", { class: "card" }, h("h2", {}, "Tasks"), h("p", { class: "muted" }, "The agent task API's tasks, newest first (as a system caller: every user's)."), body));
  return every(5000, async () => {
    try {
      const { data } = await api.call<{ data: { tasks: TaskRow[]; total: number } }>("GET", "/api/agent/history?limit=50");
      const rows = data.tasks.map((t) => [h("code", {}, t.id), h("span", { class: `pill ${t.status}` }, t.status), t.owner ?? "", t.task ?? "", num(t.priority ?? ""), when(t.createdAt), t.error ?? ""]);
      fill(body, h("p", { class: "muted" }, `${data.total} in all`), rows.length ? table(["id", "status", "user", "task", ["priority", "num"], "created", "error"], rows, { id: "task-table" }) : h("p", { class: "muted" }, "No tasks."));
    } catch (err) {
      fill(body, h("p", { class: err instanceof ApiError && err.status === 404 ? "muted" : "error" }, describe(err)));
    }
  });
}

// ---------------------------------------------------------------------------------------

// Defined here rather than trusted to the package's import side effect, which a bundler
// may drop from sources it treats as side-effect free.
defineStatusElement();
const saved = storedCredential();
if (saved) {
  void start(saved).catch((err: unknown) => logout(`logged out: ${describe(err)}`));
} else {
  showLogin();
}
