// Reading a device token's lifetime, to refresh it before it expires.

/** The claims the client reads from a JWT's payload (unverified). */
export interface TokenTimes {
  /** `exp`, seconds since the epoch. */
  exp?: number;
  /** `iat`, seconds since the epoch. */
  iat?: number;
}

function base64UrlDecode(s: string): Uint8Array {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * `exp` and `iat` of a JWT, read from its payload without verifying it (the gateway
 * verifies; the client only needs to know when to refresh). `{}` when the credential
 * is not a JWT (an API key) or has no such claims.
 */
export function tokenTimes(token: string): TokenTimes {
  const parts = token.split(".");
  if (parts.length !== 3) return {};
  try {
    const claims: unknown = JSON.parse(new TextDecoder().decode(base64UrlDecode(parts[1]!)));
    if (typeof claims !== "object" || claims === null) return {};
    const { exp, iat } = claims as Record<string, unknown>;
    return {
      exp: typeof exp === "number" && Number.isFinite(exp) ? exp : undefined,
      iat: typeof iat === "number" && Number.isFinite(iat) ? iat : undefined,
    };
  } catch {
    return {};
  }
}

/** The least time before `exp` at which a token is refreshed. */
export const MIN_REFRESH_LEAD_MS = 5_000;

/**
 * When to refresh `token` (milliseconds since the epoch): 10% of its lifetime before
 * its `exp`, and at least 5 s before. The lifetime runs from `iat`, or from when the
 * token was obtained when it has none. `undefined` for a credential without `exp`,
 * which is never refreshed on a timer.
 */
export function refreshAt(token: string, obtainedAtMs: number): number | undefined {
  const { exp, iat } = tokenTimes(token);
  if (exp === undefined) return undefined;
  const expMs = exp * 1000;
  const startMs = iat !== undefined ? iat * 1000 : obtainedAtMs;
  const lifetime = Math.max(0, expMs - startMs);
  return expMs - Math.max(lifetime / 10, MIN_REFRESH_LEAD_MS);
}
