// The test pushes the console is waiting to see arrive, for the latency it shows.

/**
 * Message id → when the console pushed it (performance.now()). Bounded: an entry goes
 * when its message arrives or the wait for it is given up, and past `max` entries the
 * oldest goes (a page left open for days keeps no more than that).
 */
export class SentTimes {
  readonly #at = new Map<string, number>();

  constructor(readonly max = 64) {}

  /** How many pushes are remembered. */
  get size(): number {
    return this.#at.size;
  }

  /** Remembers when `id` was pushed. */
  add(id: string, at: number): void {
    this.#at.delete(id);
    this.#at.set(id, at);
    for (const oldest of this.#at.keys()) {
      if (this.#at.size <= this.max) break;
      this.#at.delete(oldest);
    }
  }

  /** When `id` was pushed (undefined: not remembered), and forgets it. */
  take(id: string): number | undefined {
    const at = this.#at.get(id);
    this.#at.delete(id);
    return at;
  }
}
