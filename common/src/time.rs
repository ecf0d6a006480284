//! Time conversions. Redis `TIME` (inside scripts) is the only clock that decides
//! leases and versions; these helpers only convert its milliseconds.
use std::time::Duration;

use prost_types::Timestamp;

/// Milliseconds since the Unix epoch → protobuf `Timestamp`.
pub fn ms_to_timestamp(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A protobuf `Duration` → std, or `None` when it is negative or out of range.
pub fn proto_duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Seconds since the Unix epoch, by this machine's clock (0 before 1970).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch, by this machine's clock (0 before 1970).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_milliseconds() {
        let t = ms_to_timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let t = ms_to_timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }

    #[test]
    fn rejects_negative_durations() {
        let d = prost_types::Duration { seconds: -1, nanos: 0 };
        assert_eq!(proto_duration(&d), None);
        let d = prost_types::Duration { seconds: 2, nanos: 500_000_000 };
        assert_eq!(proto_duration(&d), Some(Duration::from_millis(2500)));
    }
}
