// A small typed event emitter (browsers and Node alike).

/** A listener of one event type. */
export type Listener<T> = (event: T) => void;

/** Emits events of the types in `Events` (event name → payload). */
export class Emitter<Events extends object> {
  #listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Calls `listener` on every `type` event; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => this.off(type, listener);
  }

  /** Calls `listener` on the next `type` event only. */
  once<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(type, (event) => {
      off();
      listener(event);
    });
    return off;
  }

  /** Removes a listener added with `on`. */
  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.#listeners.get(type)?.delete(listener as Listener<never>);
  }

  /**
   * Calls every listener of `type`. A listener that throws does not stop the others
   * or the emitter: its error goes to `listenerError`, which rethrows it asynchronously
   * (an uncaught error in the page or process, where it is seen).
   */
  protected emit<K extends keyof Events>(type: K, event: Events[K]): void {
    for (const listener of [...(this.#listeners.get(type) ?? [])]) {
      try {
        (listener as Listener<Events[K]>)(event);
      } catch (err) {
        this.listenerError(err);
      }
    }
  }

  /** What happens to an error a listener threw: rethrown asynchronously, by default. */
  protected listenerError(err: unknown): void {
    queueMicrotask(() => {
      throw err;
    });
  }
}
