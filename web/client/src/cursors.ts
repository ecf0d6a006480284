// Per-history positions: what the device has processed, where it resumes.
import { create } from "@bufbuild/protobuf";
import { Audience, CursorSchema, type Cursor } from "./gen/push/v1/push_pb.js";
import { compareIds, formatMessageId, NO_MESSAGE, parseMessageId } from "./ids.js";

/** Which history: a user's inbox, a group's history or the broadcast history. */
export type AudienceName = "user" | "group" | "all";

/** One history. */
export interface HistoryRef {
  /** "user" (the user's inbox), "group" or "all" (the broadcast history). */
  audience: AudienceName;
  /** The group, for "group"; "" otherwise. */
  groupId: string;
}

/**
 * A position in one history: its epoch (from the last HistoryState) and the id of
 * the last message processed there. Plain JSON, to persist (e.g. in localStorage) and
 * give back as `PushClientOptions.cursors`.
 */
export interface CursorSnapshot extends HistoryRef {
  /** The history's epoch; "" while the stream has not told it. */
  epoch: string;
  /** The last message processed, "<ms>-<seq>" ("<ms>" is read as "<ms>-0"); "0-0" for none. */
  messageId: string;
}

/** The proto Audience of a name. */
export function audienceOf(name: AudienceName): Audience {
  return name === "user" ? Audience.USER : name === "group" ? Audience.GROUP : Audience.ALL;
}

/** The name of a proto Audience; undefined for UNSPECIFIED or an unknown value. */
export function audienceName(a: Audience): AudienceName | undefined {
  switch (a) {
    case Audience.USER:
      return "user";
    case Audience.GROUP:
      return "group";
    case Audience.ALL:
      return "all";
    default:
      return undefined;
  }
}

/** The key of a history in maps. */
export function historyKey(h: HistoryRef): string {
  return h.audience === "group" ? `group:${h.groupId}` : h.audience;
}

/** A snapshot as the proto Cursor (its id spelt `<ms>-<seq>`, as the gateway wants it). */
export function toCursor(c: CursorSnapshot): Cursor {
  const id = parseMessageId(c.messageId);
  return create(CursorSchema, {
    audience: audienceOf(c.audience),
    groupId: c.audience === "group" ? c.groupId : "",
    epoch: c.epoch,
    messageId: id ? formatMessageId(id) : c.messageId,
  });
}

const DECIMAL = /^\d+$/;

/**
 * Whether position `a` is after `b` as the gateway orders acks: in the same epoch (the
 * same string), a later message id; in another epoch, a newer one when both are
 * numbers (made from Redis's clock); epochs that are not both numbers are taken as
 * newer and left to the gateway to judge.
 */
export function isAfter(a: CursorSnapshot, b: CursorSnapshot): boolean {
  if (a.epoch === b.epoch) return compareIds(a.messageId, b.messageId) > 0;
  if (DECIMAL.test(a.epoch) && DECIMAL.test(b.epoch)) return BigInt(a.epoch) > BigInt(b.epoch);
  return true;
}

/** Checks a snapshot read back from storage; throws on a malformed one. */
export function checkSnapshot(c: CursorSnapshot): CursorSnapshot {
  if (c.audience !== "user" && c.audience !== "group" && c.audience !== "all") {
    throw new TypeError(`cursor: unknown audience ${JSON.stringify(c.audience)}`);
  }
  if (c.audience === "group" && !c.groupId) throw new TypeError("cursor: a group cursor needs groupId");
  const messageId = String(c.messageId || NO_MESSAGE);
  if (!parseMessageId(messageId)) throw new TypeError(`cursor: not a message id: ${JSON.stringify(messageId)}`);
  return {
    audience: c.audience,
    groupId: c.audience === "group" ? String(c.groupId) : "",
    epoch: String(c.epoch ?? ""),
    messageId,
  };
}
