import { describe, expect, it } from "vitest";
import { matchesPattern, MessageBus } from "../../src/bus.js";
import { createLogger } from "../../src/logger.js";

describe("wildcard patterns", () => {
  const cases: Array<[string, string, boolean]> = [
    ["*", "ack", true],
    ["*", "task.event", true],
    ["task.*", "task.update", true],
    ["task.*", "task.event.step", true],
    ["task.*", "task", false],
    ["task.*", "tasks.update", false],
    ["room.*.x", "room.a.x", true],
    ["room.*.x", "room.a.y", false],
    ["room.*.x", "room.a.b.x", false],
    ["room.message", "room.message", true],
    ["room.message", "room.messages", false],
  ];
  for (const [pattern, type, expected] of cases) {
    it(`${pattern} ${expected ? "matches" : "does not match"} ${type}`, () => {
      expect(matchesPattern(pattern, type)).toBe(expected);
    });
  }
});

describe("MessageBus", () => {
  it("delivers to every matching handler and stops after off", () => {
    const bus = new MessageBus();
    const got: string[] = [];
    const off = bus.on("task.*", (f) => got.push(`task:${f.type}`));
    bus.on("*", (f) => got.push(`all:${f.type}`));
    bus.emit({ type: "task.update" });
    bus.emit({ type: "room.message" });
    off();
    bus.emit({ type: "task.update" });
    expect(got).toEqual(["task:task.update", "all:task.update", "all:room.message", "all:task.update"]);
  });
});

describe("logger", () => {
  it("drops messages below its level and prefixes the rest", () => {
    const lines: string[] = [];
    const sink = { debug: (m: string) => lines.push(`d ${m}`), info: (m: string) => lines.push(`i ${m}`), warn: (m: string) => lines.push(`w ${m}`), error: (m: string) => lines.push(`e ${m}`) };
    const logger = createLogger("warn", sink);
    logger.debug("a");
    logger.info("b");
    logger.warn("c");
    logger.error("d");
    expect(lines).toEqual(["w [switchboard] c", "e [switchboard] d"]);
    createLogger("silent", sink).error("x");
    expect(lines).toHaveLength(2);
  });
});
