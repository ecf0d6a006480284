// Timers on the monotonic clock that may be set any distance ahead.

/** The longest delay setTimeout honours (browsers and Node fire a longer one at once). */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * One pending callback at a time, due at a time of `performance.now()` (monotonic:
 * changes of the device's wall clock do not move it). A delay longer than setTimeout
 * allows is waited in steps of at most 2³¹-1 ms, the time checked again after each.
 */
export class Timer {
  #id?: ReturnType<typeof setTimeout>;

  /** Whether a callback is waiting. */
  get pending(): boolean {
    return this.#id !== undefined;
  }

  /** Calls `fn` in `ms` milliseconds (replacing what was waiting). */
  after(ms: number, fn: () => void): void {
    this.at(performance.now() + Math.max(0, ms), fn);
  }

  /** Calls `fn` when `performance.now()` reaches `at` (replacing what was waiting). */
  at(at: number, fn: () => void): void {
    this.clear();
    const arm = (): void => {
      const left = at - performance.now();
      if (left > MAX_TIMEOUT_MS) {
        this.#id = setTimeout(arm, MAX_TIMEOUT_MS);
        return;
      }
      this.#id = setTimeout(
        () => {
          this.#id = undefined;
          fn();
        },
        Math.max(0, left),
      );
    };
    arm();
  }

  /** Drops what was waiting. */
  clear(): void {
    clearTimeout(this.#id);
    this.#id = undefined;
  }
}

/**
 * `promise`, or a rejection with `onTimeout()` if it has not settled within `ms`
 * milliseconds (what it settles to later is ignored).
 */
export function withDeadline<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = new Timer();
    timer.after(ms, () => reject(onTimeout()));
    promise.then(
      (v) => {
        timer.clear();
        resolve(v);
      },
      (err: unknown) => {
        timer.clear();
        reject(err);
      },
    );
  });
}
