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

/** The least time before a token's end at which it is refreshed. */
export const MIN_REFRESH_LEAD_MS = 5_000;

/**
 * How long `token` lives from when it was received, in milliseconds: `exp - iat` when
 * it has `iat` (the device's clock plays no part: it may be wrong), else `exp` minus
 * the device's clock (`nowMs`). `undefined` for a credential without `exp` (an API
 * key), which never expires on the client's side. Zero or less: it has already expired.
 */
export function tokenLifetime(token: string, nowMs: number = Date.now()): number | undefined {
  const { exp, iat } = tokenTimes(token);
  if (exp === undefined) return undefined;
  return iat !== undefined ? (exp - iat) * 1000 : exp * 1000 - nowMs;
}

/**
 * When to refresh a token that lives `lifetimeMs` from its receipt: that many
 * milliseconds after it was received, 10% of its lifetime before its end and at least
 * 5 s before (zero or less: at once).
 */
export function refreshAfter(lifetimeMs: number): number {
  return lifetimeMs - Math.max(lifetimeMs / 10, MIN_REFRESH_LEAD_MS);
}
