// A tiny static server (loopback) for the test page: the page, its bundled script, and
// /token, which mints device tokens as an app's auth service would.
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { System } from "./system.js";

const here = dirname(fileURLToPath(import.meta.url));
/** The page's files: web/e2e/page/index.html and the bundle build-page.mjs wrote. */
const PAGE_HTML = resolve(here, "../../page/index.html");
const PAGE_JS = resolve(here, "../page/page.js");

/** The running page server. */
export interface PageServer {
  /** Its origin, e.g. http://127.0.0.1:41234 (the gateways allow it: --cors-allow-origin). */
  origin: string;
  /** Tokens handed out by /token, per user, in order. */
  tokens: Map<string, number>;
  /** The page's URL for `user` on `device`, talking to `gatewayUrl`; `ttl`: token lifetime (s). */
  pageUrl(gatewayUrl: string, user: string, device: string, ttl?: number): string;
  close(): Promise<void>;
}

/** Starts the page server on a free loopback port; `sys` signs its tokens. */
export async function startPageServer(port: number, sys: () => System): Promise<PageServer> {
  const tokens = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const send = (status: number, type: string, body: string | Buffer) => {
      res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      res.end(body);
    };
    if (url.pathname === "/") return send(200, "text/html; charset=utf-8", readFileSync(PAGE_HTML));
    if (url.pathname === "/page.js") return send(200, "text/javascript; charset=utf-8", readFileSync(PAGE_JS));
    if (url.pathname === "/token") {
      const user = url.searchParams.get("user") ?? "";
      const ttl = Number(url.searchParams.get("ttl") ?? "600");
      tokens.set(user, (tokens.get(user) ?? 0) + 1);
      return send(200, "text/plain", sys().deviceToken(user, ttl));
    }
    send(404, "text/plain", "not found");
  });
  await new Promise<void>((ok) => server.listen(port, "127.0.0.1", ok));
  const origin = `http://127.0.0.1:${port}`;
  return {
    origin,
    tokens,
    pageUrl: (gatewayUrl, user, device, ttl = 600) =>
      `${origin}/?${new URLSearchParams({ gateway: gatewayUrl, user, device, ttl: String(ttl) })}`,
    close: () =>
      new Promise((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}
