// A PushGateway client for backends and operator pages (calls with an API key).
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { PushGateway } from "./gen/push/v1/push_pb.js";

/** What `gatewayClient` needs. */
export interface GatewayClientOptions {
  /** The gateway's gRPC-Web URL ("/" or the page's origin for the console). */
  baseUrl: string;
  /** The fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** Sent as `authorization: Bearer ...` on every call: an API key, or a function returning one. */
  credential: string | (() => string | Promise<string>);
}

/**
 * A typed client of every push.v1.PushGateway RPC over gRPC-Web
 * (`await gw.pushToUsers({...})`, `for await (const r of gw.watchPresence({}))`),
 * sending the credential on every call. For a transport of your own, use
 * `createClient(PushGateway, transport)` from @connectrpc/connect.
 */
export function gatewayClient(options: GatewayClientOptions): Client<typeof PushGateway> {
  const auth: Interceptor = (next) => async (req) => {
    const c = options.credential;
    req.header.set("authorization", `Bearer ${typeof c === "string" ? c : await c()}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl: options.baseUrl, fetch: options.fetch, interceptors: [auth] });
  return createClient(PushGateway, transport);
}
