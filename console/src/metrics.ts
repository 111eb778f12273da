// `/metrics` (Prometheus text) sampled every few seconds while the console is open, kept
// for the last minutes, drawn as small inline SVG line charts.

/** Sums every series of `name` (all label sets) in a Prometheus text exposition. */
export function sumMetric(text: string, name: string): number | undefined {
  let total: number | undefined;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    // `name 3` or `name{labels} 3`, not `name_bucket…` or `name_sum`.
    if (rest[0] !== " " && rest[0] !== "{") continue;
    const value = Number(rest.slice(rest.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) total = (total ?? 0) + value;
  }
  return total;
}

export interface Sample {
  at: number;
  connections: number;
  deliveries: number;
  slowCloses: number;
  published: number;
}

export interface Point {
  at: number;
  value: number;
}

const WINDOW_MS = 5 * 60_000;

export class MetricsHistory {
  readonly samples: Sample[] = [];
  error: string | undefined;

  add(text: string, at = Date.now()): void {
    this.samples.push({
      at,
      connections: sumMetric(text, "switchboard_connections") ?? 0,
      deliveries: sumMetric(text, "switchboard_deliveries_total") ?? 0,
      slowCloses: sumMetric(text, "switchboard_slow_consumer_closes_total") ?? 0,
      published: sumMetric(text, "switchboard_messages_published_total") ?? 0,
    });
    while (this.samples.length > 1 && this.samples[0]!.at < at - WINDOW_MS) this.samples.shift();
  }

  gauge(field: keyof Omit<Sample, "at">): Point[] {
    return this.samples.map((s) => ({ at: s.at, value: s[field] }));
  }

  /** Per-second rate of a counter between samples; a counter that went down (a broker restart) starts again from 0. */
  rate(field: keyof Omit<Sample, "at">): Point[] {
    const points: Point[] = [];
    for (let i = 1; i < this.samples.length; i++) {
      const a = this.samples[i - 1]!;
      const b = this.samples[i]!;
      const seconds = (b.at - a.at) / 1000;
      if (seconds <= 0) continue;
      const delta = b[field] >= a[field] ? b[field] - a[field] : b[field];
      points.push({ at: b.at, value: delta / seconds });
    }
    return points;
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>, text?: string): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function format(value: number): string {
  if (Number.isInteger(value)) return String(value);
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 1) return value.toFixed(1);
  return value.toFixed(2);
}

/** A line chart of `points` over the last minutes, with its latest value and maximum. */
export function lineChart(title: string, points: Point[], unit: string, now = Date.now()): SVGSVGElement {
  const width = 320;
  const height = 120;
  const left = 36;
  const top = 18;
  const bottom = height - 16;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, "data-metric": title });
  const max = Math.max(1, ...points.map((p) => p.value));
  const latest = points.at(-1)?.value;
  chart.append(
    svg("text", { x: 4, y: 12 }, `${title}: ${latest === undefined ? "–" : format(latest)} ${unit}`),
    svg("text", { x: 4, y: top + 8 }, format(max)),
    svg("text", { x: 4, y: bottom }, "0"),
    svg("line", { x1: left, y1: bottom, x2: width - 4, y2: bottom }),
    svg("line", { x1: left, y1: top, x2: width - 4, y2: top }),
    svg("text", { x: left, y: height - 3 }, "−5 min"),
    svg("text", { x: width - 30, y: height - 3 }, "now"),
  );
  const x = (at: number): number => left + ((at - (now - WINDOW_MS)) / WINDOW_MS) * (width - 4 - left);
  const y = (value: number): number => bottom - (value / max) * (bottom - top);
  const coordinates = points.filter((p) => p.at >= now - WINDOW_MS).map((p) => `${x(p.at).toFixed(1)},${y(p.value).toFixed(1)}`);
  if (coordinates.length) chart.append(svg("polyline", { points: coordinates.join(" ") }));
  return chart;
}
