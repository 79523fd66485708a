//! Identifiers parsed once at the edge; past the handler nothing re-checks them.

use std::fmt;

/// Why a path identifier was refused; the handler names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 24 hexadecimal characters")]
pub struct InvalidId;

const ID_LEN: usize = 24;

/// An identifier's characters, held inline: ids are parsed, cloned and written on every request,
/// and a `String` would be an allocation each time.
type Hex24 = [u8; ID_LEN];

fn parse_hex24(raw: &str) -> Result<Hex24, InvalidId> {
    let mut id: Hex24 = raw.as_bytes().try_into().map_err(|_| InvalidId)?;
    if !id.iter().all(u8::is_ascii_hexdigit) {
        return Err(InvalidId);
    }
    id.make_ascii_lowercase();
    Ok(id)
}

fn random_hex24() -> Hex24 {
    let mut id = [0; ID_LEN];
    hex::encode_to_slice(rand::random::<[u8; ID_LEN / 2]>(), &mut id).expect("24 hex digits");
    id
}

fn hex24_str(id: &Hex24) -> &str {
    std::str::from_utf8(id).expect("an id holds only ASCII hex digits")
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, example = $example:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String")]
        #[schema(
            value_type = String,
            pattern = "^[0-9a-fA-F]{24}$",
            example = $example
        )]
        pub struct $name(Hex24);

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.as_str().to_owned()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl $name {
            /// Accepts 24 hexadecimal characters in either case; always held in lowercase.
            pub fn parse(raw: &str) -> Result<Self, InvalidId> {
                parse_hex24(raw).map(Self)
            }

            /// A fresh random identifier (96 bits, like the spec's ObjectId-shaped examples).
            pub fn generate() -> Self {
                Self(random_hex24())
            }

            pub fn as_str(&self) -> &str {
                hex24_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

hex_id!(
    /// The account group that scopes a request.
    AccountGroupId,
    example = "507f1f77bcf86cd799439011"
);
// Its example differs from the group's, so that a request the API page fills in names a scan,
// not the group again.
hex_id!(
    /// A signal scan, as returned when the scan was started.
    ScanId,
    example = "65a1f0c2e4b0a1b2c3d4e5f6"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_24_hex_characters_in_either_case_and_held_lowercase() {
        let id = ScanId::parse("507F1F77BCF86CD799439011").unwrap();
        assert_eq!(id.as_str(), "507f1f77bcf86cd799439011");
    }

    #[test]
    fn malformed_ids_are_refused() {
        for raw in [
            "",
            "507f1f77bcf86cd79943901",
            "507f1f77bcf86cd7994390111",
            "507f1f77bcf86cd79943901g",
            "507f1f77-cf86cd799439011",
            "５07f1f77bcf86cd79943901",
        ] {
            assert_eq!(AccountGroupId::parse(raw), Err(InvalidId), "{raw:?}");
        }
    }

    #[test]
    fn generated_ids_parse_back() {
        let id = ScanId::generate();
        assert_eq!(ScanId::parse(id.as_str()).unwrap(), id);
    }
}
