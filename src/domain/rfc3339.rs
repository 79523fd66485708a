//! RFC 3339 instants in serde, as `time::serde::rfc3339` writes and reads them, but written
//! from a buffer on the stack: `time`'s own module formats each instant into a `String` first,
//! and every answer and every published change carries one or more.

use serde::{Deserializer, Serializer, ser::Error};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Longer than any RFC 3339 instant `time` writes (`-9999-12-31T23:59:59.999999999+23:59` is 36).
const MAX_LEN: usize = 48;

pub fn serialize<S: Serializer>(at: &OffsetDateTime, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buffer = [0u8; MAX_LEN];
    let mut unwritten = &mut buffer[..];
    at.format_into(&mut unwritten, &Rfc3339)
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
    fn writes_what_time_writes_and_reads_it_back() {
        for at in [
            datetime!(2026-12-01 06:26:40.123456 UTC),
            datetime!(2026-12-01 06:26:40 UTC),
            datetime!(9999-12-31 23:59:59.999999999 -23:59),
            datetime!(0000-01-01 00:00:00 +00:00:00),
        ] {
            let both = Both {
                ours: at,
                theirs: at,
                maybe: Some(at),
            };
            let json = serde_json::to_value(&both).unwrap();
            assert_eq!(json["ours"], json["theirs"], "{at}");
            assert_eq!(json["maybe"], json["theirs"], "{at}");
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
