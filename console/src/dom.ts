// Tiny DOM helpers. Text always goes in as text nodes, never as HTML: room messages and
// webhook errors are other people's data, and this page holds an admin credential.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | undefined | ((event: Event) => void)>;

/** `h("td", {class: "num"}, 42)`: an element with attributes, listeners (`onclick`) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

export function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
}

/** Replaces `parent`'s children. */
export function fill(parent: Node, ...children: Child[]): void {
  while (parent.firstChild) parent.removeChild(parent.firstChild);
  append(parent, children);
}

/** A table with a header row; `rows` are lists of cells (a cell may be an element). */
export function table(headers: Array<string | [string, string]>, rows: Child[][], attrs: Attrs = {}): HTMLTableElement {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, ...headers.map((c) => (Array.isArray(c) ? h("th", { class: c[1] }, c[0]) : h("th", {}, c))))),
    h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((c) => (c instanceof HTMLTableCellElement ? c : h("td", {}, c)))))),
  );
}

export function num(value: number | string): HTMLTableCellElement {
  return h("td", { class: "num" }, value);
}

export function when(ms: number | string | null | undefined): string {
  if (ms === null || ms === undefined) return "";
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(ms) : date.toLocaleString();
}
