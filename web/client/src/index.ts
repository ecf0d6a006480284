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
export { compareIds, compareEpochs, parseMessageId, NO_MESSAGE, type MessageIdParts } from "./ids.js";
export { codeName, isRetryable, isStop, type Status } from "./status.js";
export { refreshAfter, tokenLifetime, tokenTimes, MIN_REFRESH_LEAD_MS, type TokenTimes } from "./token.js";
export { Emitter, type Listener } from "./emitter.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { Audience, Continuity, type Message } from "./gen/push/v1/push_pb.js";
