//! Ids parsed once, at the edge. Ids become parts of Redis keys and hash tags; the key
//! schema ([`crate::keys`]) takes only these types, so an id that was not validated
//! cannot form a key, whichever RPC it came through.
use std::{fmt, ops::Deref};

use crate::validate::id_problem;

/// A validated id.
pub trait Id: Sized {
    /// The id, or why `s` is not one.
    fn parse(s: &str) -> Result<Self, String>;
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl Id for $name {
            fn parse(s: &str) -> Result<Self, String> {
                match id_problem(s) {
                    None => Ok(Self(s.into())),
                    Some(problem) => Err(problem),
                }
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }
    };
}

id_type!(
    /// A user's id.
    UserId
);
id_type!(
    /// A group's id.
    GroupId
);
id_type!(
    /// A device's id: the id of its presence session.
    DeviceId
);
id_type!(
    /// A push's idempotency key (or the name of the API key it is scoped to).
    IdemKey
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_ids_parse() {
        assert_eq!(UserId::parse("ann").unwrap().as_str(), "ann");
        assert!(UserId::parse("a{b").is_err());
        assert!(GroupId::parse("").is_err());
        assert_eq!(&*DeviceId::parse("phone-1").unwrap(), "phone-1");
    }
}
