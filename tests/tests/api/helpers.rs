use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Asserts INVALID_ARGUMENT whose BadRequest details name `field`.
#[track_caller]
pub fn assert_invalid(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let br = details.bad_request().unwrap_or_else(|| panic!("no BadRequest details in {status:?}"));
    assert!(
        br.field_violations.iter().any(|v| v.field == field),
        "no violation for {field:?} in {:?}",
        br.field_violations
    );
    assert!(status.message().contains(field), "message {:?} does not name {field}", status.message());
}

pub fn ttl(ms: u64) -> Option<prost_types::Duration> {
    let d = Duration::from_millis(ms);
    Some(prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}
