//! What travels on the gateway's Pub/Sub channels: the one definition for the side
//! that publishes (the Lua scripts in `lua/` and [`crate::push`]) and the side that
//! receives (the hub). The first byte of every payload says what follows.
//!
//! | kind | rest | published by |
//! |---|---|---|
//! | [`MESSAGE`] | one encoded `Message`, its id first | older replicas' `push.lua` (still read) |
//! | [`MEMBERSHIP`] | nothing: the user's groups changed | JoinGroup / LeaveGroup |
//! | [`PROBE`] | the probe's number | the hub, on its own probe channel |
//! | [`EPOCH`] | the history's new epoch (decimal) | `push.lua` |
//! | [`MESSAGE_AFTER`] | a length byte, the id that preceded the message in its history ('' for none), then the message as [`MESSAGE`] | `push.lua` |
//! | [`DISCONNECT`] | a device id ('' for every device of the user) | Logout |
//! | [`MESSAGE_EXCEPT`] | as [`MESSAGE_AFTER`], with the excluded users (`,a,b,`, a 4-byte big-endian length first) between the predecessor and the message | `push.lua`, a push with excluded users |
//! | [`DISCONNECT_WITH`] | a length byte, a device id ('' for all), a byte 1 if the client may reconnect (else 0), the reason | Disconnect |
//!
//! A message is encoded by `push.lua` with its id as field 1 ([`MESSAGE_ID_TAG`],
//! then a one-byte length), so the id is read without decoding the message.
use crate::history::StreamId;

pub const MESSAGE: u8 = 1;
pub const MEMBERSHIP: u8 = 2;
pub const PROBE: u8 = 3;
pub const EPOCH: u8 = 4;
pub const MESSAGE_AFTER: u8 = 5;
pub const DISCONNECT: u8 = 6;
pub const MESSAGE_EXCEPT: u8 = 7;
pub const DISCONNECT_WITH: u8 = 8;

/// The protobuf key of `Message.id` (field 1, length-delimited).
pub const MESSAGE_ID_TAG: u8 = 0x0A;

/// A payload, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// A message and the id that preceded it in its history (None: not known, or the
    /// history's first).
    Message {
        prev: Option<StreamId>,
        id: StreamId,
        message: &'a [u8],
        /// Users whose streams skip it, as `,a,b,` (empty for none).
        except: &'a [u8],
    },
    Membership,
    Probe(&'a [u8]),
    Epoch(u64),
    /// End the streams of this device of the channel's user ('' for all of them).
    Disconnect(&'a str),
    /// The same, with whether the client may reconnect and why (Disconnect).
    DisconnectWith {
        device: &'a str,
        reconnect: bool,
        reason: &'a str,
    },
}

impl<'a> Envelope<'a> {
    /// None for a payload in no known format.
    pub fn parse(payload: &'a [u8]) -> Option<Envelope<'a>> {
        let (&kind, rest) = payload.split_first()?;
        Some(match kind {
            MESSAGE => Envelope::Message { prev: None, id: message_id(rest)?, message: rest, except: &[] },
            MESSAGE_AFTER | MESSAGE_EXCEPT => {
                let (&len, rest) = rest.split_first()?;
                let (prev, mut message) = rest.split_at_checked(len as usize)?;
                let prev = match prev {
                    [] => None,
                    p => Some(std::str::from_utf8(p).ok()?.parse().ok()?),
                };
                let mut except: &[u8] = &[];
                if kind == MESSAGE_EXCEPT {
                    let (len, rest) = message.split_first_chunk::<4>()?;
                    (except, message) = rest.split_at_checked(u32::from_be_bytes(*len) as usize)?;
                }
                Envelope::Message { prev, id: message_id(message)?, message, except }
            }
            MEMBERSHIP => Envelope::Membership,
            PROBE => Envelope::Probe(rest),
            EPOCH => Envelope::Epoch(crate::history::parse_epoch(std::str::from_utf8(rest).ok()?)?),
            DISCONNECT => Envelope::Disconnect(std::str::from_utf8(rest).ok()?),
            DISCONNECT_WITH => {
                let (&len, rest) = rest.split_first()?;
                let (device, rest) = rest.split_at_checked(len as usize)?;
                let (&reconnect, reason) = rest.split_first()?;
                let device = std::str::from_utf8(device).ok()?;
                Envelope::DisconnectWith {
                    device,
                    reconnect: reconnect == 1,
                    reason: std::str::from_utf8(reason).ok()?,
                }
            }
            _ => return None,
        })
    }
}

/// The id of a message as `push.lua` writes it: the first field, `0x0A len id`.
pub fn message_id(encoded: &[u8]) -> Option<StreamId> {
    let (&tag, rest) = encoded.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if tag != MESSAGE_ID_TAG || len >= 0x80 {
        return None;
    }
    std::str::from_utf8(rest.get(..len as usize)?).ok()?.parse().ok()
}

/// A probe payload.
pub fn probe(n: u64) -> Vec<u8> {
    let mut payload = vec![PROBE];
    payload.extend_from_slice(&n.to_be_bytes());
    payload
}

/// Ends the streams of `device` ('' for all devices) of the channel's user.
pub fn disconnect(device: &str) -> Vec<u8> {
    let mut payload = vec![DISCONNECT];
    payload.extend_from_slice(device.as_bytes());
    payload
}

/// Ends the streams of `device` ('' for all devices) of the channel's user, saying why
/// and whether the client may reconnect. A device id is at most 128 bytes.
pub fn disconnect_with(device: &str, reconnect: bool, reason: &str) -> Vec<u8> {
    let mut payload = vec![DISCONNECT_WITH, device.len() as u8];
    payload.extend_from_slice(device.as_bytes());
    payload.push(reconnect as u8);
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// How a stream ended by Disconnect ends: UNAVAILABLE when the client may reconnect,
/// PERMISSION_DENIED when not, both with an `ErrorInfo` (reason `DISCONNECTED`, domain
/// `push.v1`, metadata `reason` and `reconnect`) a client library can act on.
pub fn disconnected(reconnect: bool, reason: &str) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let (code, what) = match reconnect {
        true => (tonic::Code::Unavailable, "disconnected by the backend; reconnect"),
        false => (tonic::Code::PermissionDenied, "disconnected by the backend; do not reconnect"),
    };
    let message = if reason.is_empty() { what.to_owned() } else { format!("{what}: {reason}") };
    let metadata: std::collections::HashMap<String, String> =
        [("reason".to_owned(), reason.to_owned()), ("reconnect".to_owned(), reconnect.to_string())].into();
    let details = ErrorDetails::with_error_info("DISCONNECTED", "push.v1", metadata);
    tonic::Status::with_error_details(code, message, details)
}

/// Whether `user` is in an excluded list (`,a,b,`).
pub fn excludes(except: &[u8], user: &str) -> bool {
    !except.is_empty() && !user.is_empty() && except.split(|b| *b == b',').any(|u| u == user.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts write the kinds and the id tag as Lua escapes: they must be these.
    #[test]
    fn the_scripts_publish_what_this_module_reads() {
        let push = crate::store::scripts::PUSH;
        assert!(push.contains(&format!("'\\{EPOCH}' .. epoch")), "push.lua's epoch kind");
        assert!(push.contains("local after = string.char(#prev[i]) .. prev[i]"));
        assert!(push.contains(&format!("'\\{MESSAGE_AFTER}' .. after .. msg")));
        assert!(push.contains(&format!("'\\{MESSAGE_EXCEPT}' .. after .. xlen .. x .. msg")));
        assert!(push.contains(&format!("local msg = '\\{MESSAGE_ID_TAG}' .. string.char(#id) .. id .. ARGV[6]")));
    }

    #[test]
    fn messages_parse_with_and_without_predecessor() {
        let mut m = vec![MESSAGE_ID_TAG, 15];
        m.extend_from_slice(b"1764262800123-7");
        m.extend_from_slice(&[0x12, 1, b't']);
        let id = StreamId { ms: 1764262800123, seq: 7 };
        let mut legacy = vec![MESSAGE];
        legacy.extend_from_slice(&m);
        assert_eq!(Envelope::parse(&legacy), Some(Envelope::Message { prev: None, id, message: &m, except: &[] }));
        let mut after = vec![MESSAGE_AFTER, 3];
        after.extend_from_slice(b"5-1");
        after.extend_from_slice(&m);
        let prev = Some(StreamId { ms: 5, seq: 1 });
        assert_eq!(Envelope::parse(&after), Some(Envelope::Message { prev, id, message: &m, except: &[] }));
        let mut except = vec![MESSAGE_EXCEPT, 3];
        except.extend_from_slice(b"5-1");
        except.extend_from_slice(&[0, 0, 0, 7]);
        except.extend_from_slice(b",ann,b,");
        except.extend_from_slice(&m);
        let parsed = Envelope::parse(&except);
        assert_eq!(parsed, Some(Envelope::Message { prev, id, message: &m, except: b",ann,b," }));
        assert!(excludes(b",ann,b,", "ann") && excludes(b",ann,b,", "b"));
        assert!(!excludes(b",ann,b,", "an") && !excludes(b"", "ann") && !excludes(b",ann,", ""));
        assert_eq!(Envelope::parse(&except[..except.len() - m.len() - 2]), None, "truncated");
        let mut first = vec![MESSAGE_AFTER, 0];
        first.extend_from_slice(&m);
        assert_eq!(Envelope::parse(&first), Some(Envelope::Message { prev: None, id, message: &m, except: &[] }));
        assert_eq!(Envelope::parse(&[MESSAGE_AFTER, 9, b'1']), None, "truncated");
        assert_eq!(Envelope::parse(&[EPOCH, b'1', b'7']), Some(Envelope::Epoch(17)));
        assert_eq!(Envelope::parse(&disconnect("phone")), Some(Envelope::Disconnect("phone")));
        let with = disconnect_with("phone", true, "banned");
        let parsed = Envelope::parse(&with);
        assert_eq!(parsed, Some(Envelope::DisconnectWith { device: "phone", reconnect: true, reason: "banned" }));
        let all = disconnect_with("", false, "");
        let parsed = Envelope::parse(&all);
        assert_eq!(parsed, Some(Envelope::DisconnectWith { device: "", reconnect: false, reason: "" }));
        assert_eq!(Envelope::parse(&[99]), None);
        assert_eq!(Envelope::parse(&[]), None);
    }

    #[test]
    fn message_ids_are_read_from_the_first_field() {
        let mut m = vec![MESSAGE_ID_TAG, 15];
        m.extend_from_slice(b"1764262800123-7");
        assert_eq!(message_id(&m), Some(StreamId { ms: 1764262800123, seq: 7 }));
        assert_eq!(message_id(&[0x12, 1, b't']), None);
        assert_eq!(message_id(&[MESSAGE_ID_TAG, 40, b'1']), None, "truncated");
        assert_eq!(message_id(&[]), None);
    }
}
