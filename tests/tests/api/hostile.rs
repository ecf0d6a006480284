//! Hostile input to every RPC of the gateway, built from the contract itself: for every
//! string field (top level and one message level down), values that break keys and
//! hash tags (NUL, `{`/`}`, RTL marks, whitespace, 10 MB), invalid UTF-8, wrong wire
//! types and truncated bytes. Each call must end with a deliberate status (never
//! INTERNAL or UNKNOWN, which a panic or an unmapped error would give), an id field with
//! a breaker must be named in an INVALID_ARGUMENT, and a refused call must write
//! nothing to Redis. The server stays SERVING throughout.
use std::str::FromStr;

use prost::{
    Message,
    bytes::{Buf, BufMut, Bytes},
};
use prost_types::{DescriptorProto, FileDescriptorSet, field_descriptor_proto::Type};
use push_tests::{SendBearer, channel, health, secure_app};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http,
    service::Interceptor,
};
use tonic_health::pb::health_check_response::ServingStatus;

/// Sends and receives raw protobuf bytes.
#[derive(Default)]
struct Raw;
struct RawEncoder;
struct RawDecoder;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(number: i32, wire: u8, out: &mut Vec<u8>) {
    varint(((number as u64) << 3) | u64::from(wire), out);
}

fn length_delimited(number: i32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    field(number, 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

const LENGTH_DELIMITED: [Type; 3] = [Type::String, Type::Bytes, Type::Message];

/// Strings that must never reach a key unvalidated.
fn tricky() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("NUL", b"a\0b".to_vec()),
        ("hash-tag breaker", b"x}{y".to_vec()),
        ("hash tag", b"{u:other}".to_vec()),
        ("RTL override", "\u{202e}resu".as_bytes().to_vec()),
        ("zero-width", "ann\u{200b}".as_bytes().to_vec()),
        ("space", b"a b".to_vec()),
        ("newline", b"a\nb".to_vec()),
        ("10 MB", vec![b'a'; 10 << 20]),
    ]
}

struct Case {
    label: String,
    body: Vec<u8>,
    /// An id field that must be named in an INVALID_ARGUMENT.
    id_field: Option<String>,
    /// The request is not valid protobuf for its type: INVALID_ARGUMENT.
    undecodable: bool,
}

fn is_id(name: &str) -> bool {
    name.ends_with("_id") || name.ends_with("_ids")
}

/// Every hostile request for `msg`.
fn cases(fds: &FileDescriptorSet, msg: &DescriptorProto) -> Vec<Case> {
    let mut out = Vec::new();
    out.push(Case { label: "truncated".into(), body: vec![0x0a, 0xff], id_field: None, undecodable: true });
    for f in &msg.field {
        let name = f.name().to_string();
        let ty = f.r#type();
        // The wrong wire type for the field.
        let mut wrong = Vec::new();
        if LENGTH_DELIMITED.contains(&ty) {
            field(f.number(), 0, &mut wrong);
            varint(1, &mut wrong);
        } else {
            wrong = length_delimited(f.number(), b"x");
        }
        out.push(Case { label: format!("{name}: wrong wire type"), body: wrong, id_field: None, undecodable: true });
        match ty {
            Type::String => {
                let bad = length_delimited(f.number(), &[0xff, 0xfe]);
                out.push(Case {
                    label: format!("{name}: invalid UTF-8"),
                    body: bad,
                    id_field: None,
                    undecodable: true,
                });
                for (what, value) in tricky() {
                    out.push(Case {
                        label: format!("{name}: {what}"),
                        body: length_delimited(f.number(), &value),
                        id_field: is_id(&name).then(|| name.clone()),
                        undecodable: false,
                    });
                }
            }
            Type::Bytes => out.push(Case {
                label: format!("{name}: 10 MB"),
                body: length_delimited(f.number(), &vec![0u8; 10 << 20]),
                id_field: None,
                undecodable: false,
            }),
            Type::Message => {
                // One level down: the tricky strings in each string field of the message.
                let Some(inner) = message(fds, f.type_name()) else { continue };
                for g in inner.field.iter().filter(|g| g.r#type() == Type::String) {
                    for (what, value) in tricky() {
                        let nested = length_delimited(g.number(), &value);
                        out.push(Case {
                            label: format!("{name}.{}: {what}", g.name()),
                            body: length_delimited(f.number(), &nested),
                            id_field: is_id(g.name()).then(|| format!("{name}.{}", g.name())),
                            undecodable: false,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn message<'a>(fds: &'a FileDescriptorSet, full: &str) -> Option<&'a DescriptorProto> {
    let full = full.trim_start_matches('.');
    fds.file.iter().find_map(|file| {
        let name = full.strip_prefix(file.package())?.strip_prefix('.')?;
        file.message_type.iter().find(|m| m.name() == name)
    })
}

async fn send(ch: &tonic::transport::Channel, path: &str, streaming: bool, body: Vec<u8>) -> Status {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.unwrap();
    let mut admin = SendBearer::new(Some("k-admin")).unwrap();
    let req = admin.call(tonic::Request::new(())).unwrap().map(|()| Bytes::from(body));
    let path = http::uri::PathAndQuery::from_str(path).unwrap();
    let result = if streaming {
        g.server_streaming(req, path, Raw).await.map(drop)
    } else {
        g.unary(req, path, Raw).await.map(drop)
    };
    result.err().unwrap_or_else(|| Status::ok(""))
}

#[tokio::test]
async fn hostile_requests_to_every_rpc_get_a_deliberate_status_and_write_nothing() {
    let (app, _creds) = secure_app(&["--api-key-rate", "0"]).await;
    let ch = channel(app.gateway.addr).await;

    let fds = FileDescriptorSet::decode(push_proto::FILE_DESCRIPTOR_SET).unwrap();
    let svc = fds.file.iter().flat_map(|f| &f.service).find(|s| s.name() == "PushGateway").unwrap();
    let mut calls = 0;
    for m in &svc.method {
        let input = message(&fds, m.input_type()).unwrap();
        let path = format!("/push.v1.PushGateway/{}", m.name());
        for case in cases(&fds, input) {
            let before = app.redis.keys();
            let status = send(&ch, &path, m.server_streaming(), case.body).await;
            let (code, what) = (status.code(), format!("{} {}: {:?}", m.name(), case.label, status.message()));
            calls += 1;
            assert!(
                !matches!(code, Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss),
                "{what}: {code:?}"
            );
            if case.undecodable {
                assert_eq!(code, Code::InvalidArgument, "{what}");
            }
            if let Some(field) = &case.id_field
                && code != Code::ResourceExhausted
            {
                assert_eq!(code, Code::InvalidArgument, "{what}");
                let leaf = field.rsplit('.').next().unwrap();
                assert!(status.message().contains(leaf), "{what} does not name {field}");
            }
            if code != Code::Ok {
                assert_eq!(app.redis.keys(), before, "{what}: a refused call wrote to Redis");
            }
        }
    }
    assert!(calls > 400, "only {calls} hostile calls");
    assert_eq!(health(app.gateway.addr, "push.v1.PushGateway").await, Some(ServingStatus::Serving));
}
