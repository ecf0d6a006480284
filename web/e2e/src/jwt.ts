// Device tokens as an app's auth service would mint them (HS256), for the tests.
import { createHmac } from "node:crypto";

const b64url = (data: string | Buffer) => Buffer.from(data).toString("base64url");

/** The claims the gateway checks (docs/SECURITY.md). */
export interface DeviceClaims {
  sub: string;
  /** Seconds since the epoch. */
  exp: number;
  iat?: number;
  aud?: string;
  iss?: string;
  /** A unique id: two tokens minted in the same second differ. */
  jti?: string;
}

/** A JWT signed with HS256 under `kid`. */
export function signHs256(claims: DeviceClaims, secret: string, kid: string): string {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT", kid }));
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}
