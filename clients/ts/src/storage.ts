/** The part of the Web Storage API the client uses (sessionStorage fits). */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** What survives a reload: the last connection id and the last seq seen per room. */
export interface ResumeState {
  connectionId?: string;
  rooms: Record<string, number>;
}

export function memoryStorage(): KeyValueStorage {
  const map = new Map<string, string>();
  return {
    getItem: (key) => map.get(key) ?? null,
    setItem: (key, value) => void map.set(key, value),
    removeItem: (key) => void map.delete(key),
  };
}

/** `sessionStorage` when the platform has a usable one, else a memory map. */
export function defaultStorage(): KeyValueStorage {
  try {
    // Reading the property throws in sandboxed iframes and with storage disabled.
    const storage = (globalThis as { sessionStorage?: KeyValueStorage }).sessionStorage;
    if (storage) {
      const probe = "switchboard:probe";
      storage.setItem(probe, "1");
      storage.removeItem(probe);
      return storage;
    }
  } catch {
    // fall through to memory
  }
  return memoryStorage();
}

/** Reads and writes one {@link ResumeState} under one key. */
export class ResumeStore {
  private state: ResumeState;

  constructor(
    private readonly storage: KeyValueStorage,
    private readonly key: string,
  ) {
    this.state = { rooms: {} };
    try {
      const text = storage.getItem(key);
      const parsed = text ? (JSON.parse(text) as Partial<ResumeState>) : undefined;
      if (parsed && typeof parsed === "object") {
        this.state = {
          connectionId: typeof parsed.connectionId === "string" ? parsed.connectionId : undefined,
          rooms: Object.fromEntries(
            Object.entries(parsed.rooms ?? {}).filter(([, seq]) => Number.isInteger(seq) && (seq as number) >= 0),
          ),
        };
      }
    } catch {
      // A corrupt entry is worth nothing: start clean rather than fail the page.
    }
  }

  get connectionId(): string | undefined {
    return this.state.connectionId;
  }

  set connectionId(id: string | undefined) {
    this.state.connectionId = id;
    this.write();
  }

  rooms(): Record<string, number> {
    return { ...this.state.rooms };
  }

  setSeq(room: string, seq: number): void {
    this.state.rooms[room] = seq;
    this.write();
  }

  forgetRoom(room: string): void {
    delete this.state.rooms[room];
    this.write();
  }

  private write(): void {
    try {
      this.storage.setItem(this.key, JSON.stringify(this.state));
    } catch {
      // Quota or privacy mode: resume then works within this page only.
    }
  }
}
