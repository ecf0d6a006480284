// @push/client: the push system's device client for browsers and Node (gRPC-Web).
export {
  PushClient,
  type BackoffOptions,
  type ConnectedEvent,
  type DisconnectedEvent,
  type GapEvent,
  type LeftEvent,
  type PushClientEvents,
  type PushClientOptions,
  type StoppedEvent,
} from "./client.js";
export { gatewayClient, type GatewayClientOptions } from "./gateway.js";
export { type AudienceName, type CursorSnapshot, type HistoryRef, audienceName, audienceOf } from "./cursors.js";
export { compareIds, compareEpochs, NO_MESSAGE } from "./ids.js";
export { codeName, isRetryable, type Status } from "./status.js";
export { refreshAt, tokenTimes, type TokenTimes } from "./token.js";
export { Emitter, type Listener } from "./emitter.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { Audience, Continuity, type Message } from "./gen/push/v1/push_pb.js";
