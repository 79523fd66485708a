//! RFC 3339 instants in serde, always in UTC with six fractional digits (`…T04:13:27.069000Z`):
//! fixed width, so text order is time order for a client that sorts or compares them as strings
//! (`time`'s own RFC 3339 drops trailing zeros, and the fraction of a whole second: `…27.1Z`
//! sorted after `…27.12Z`). Microseconds are what both stores keep. Written from a buffer on the
//! stack: every answer and every published change carries one or more.

use serde::{Deserializer, Serializer, ser::Error};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// The one text form of an instant: the API's, the command line's and SQLite's storage.
pub(crate) const FORMAT: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// `9999-12-31T23:59:59.999999Z` is 27 bytes.
const MAX_LEN: usize = 32;

/// `at` in [`FORMAT`], in UTC.
pub(crate) fn text(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(FORMAT)
        .expect("every UTC instant of years 0 to 9999 formats")
}

pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; MAX_LEN];
    let mut unwritten = &mut buffer[..];
    at.to_offset(UtcOffset::UTC)
        .format_into(&mut unwritten, FORMAT)
        .map_err(S::Error::custom)?;
    // What was written is what the writer moved past: the count `format_into` returns fell
    // short of it for fractional seconds (time 0.3; the test below caught it).
    let len = MAX_LEN - unwritten.len();
    let text = std::str::from_utf8(&buffer[..len]).map_err(S::Error::custom)?;
    serializer.serialize_str(text)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OffsetDateTime, D::Error> {
    time::serde::rfc3339::deserialize(deserializer)
}

/// The same for an optional instant (`null` when absent).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        at: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Only the round-trip test below reads these back: the API writes instants, never reads them.
    #[cfg(test)]
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        time::serde::rfc3339::option::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Both {
        #[serde(with = "super")]
        ours: time::OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        theirs: time::OffsetDateTime,
        #[serde(with = "super::option")]
        maybe: Option<time::OffsetDateTime>,
    }

    #[test]
    fn writes_utc_with_six_digits_and_reads_it_back() {
        for (at, written) in [
            (
                datetime!(2026-12-01 06:26:40.123456 UTC),
                "2026-12-01T06:26:40.123456Z",
            ),
            (
                datetime!(2026-12-01 06:26:40 UTC),
                "2026-12-01T06:26:40.000000Z",
            ),
            (
                datetime!(2026-12-01 06:26:40.1 UTC),
                "2026-12-01T06:26:40.100000Z",
            ),
            (
                datetime!(2026-12-01 06:26:40.5 +01:30),
                "2026-12-01T04:56:40.500000Z",
            ),
            (
                datetime!(9999-12-31 23:59:59.999999 UTC),
                "9999-12-31T23:59:59.999999Z",
            ),
            (
                datetime!(0000-01-01 00:00:00 UTC),
                "0000-01-01T00:00:00.000000Z",
            ),
        ] {
            let both = Both {
                ours: at,
                theirs: at,
                maybe: Some(at),
            };
            let json = serde_json::to_value(&both).unwrap();
            assert_eq!(json["ours"], written, "{at}");
            assert_eq!(json["maybe"], written, "{at}");
            assert_eq!(super::text(at), written);
            assert_eq!(serde_json::from_value::<Both>(json).unwrap(), both);
        }
        let none = Both {
            ours: datetime!(2026-12-01 0:00 UTC),
            theirs: datetime!(2026-12-01 0:00 UTC),
            maybe: None,
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap()["maybe"],
            serde_json::Value::Null
        );
    }
}
