export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

export interface Logger {
  debug(message: string, ...details: unknown[]): void;
  info(message: string, ...details: unknown[]): void;
  warn(message: string, ...details: unknown[]): void;
  error(message: string, ...details: unknown[]): void;
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

type Sink = Pick<Console, "debug" | "info" | "warn" | "error">;

/** Prefixes messages with `[switchboard]` and drops those below `level`. */
export function createLogger(level: LogLevel = "warn", sink: Sink = console): Logger {
  const at =
    (name: Exclude<LogLevel, "silent">) =>
    (message: string, ...details: unknown[]) => {
      if (RANK[name] >= RANK[level]) sink[name](`[switchboard] ${message}`, ...details);
    };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** A Logger given as is, or a level for the console logger. */
export function resolveLogger(logger: Logger | LogLevel | undefined): Logger {
  return typeof logger === "object" ? logger : createLogger(logger);
}
