//! Property tests (proptest) of the validators and parsers every request goes through:
//! arbitrary input never panics, and what is accepted is exactly what the rules allow.
use proptest::prelude::*;
use push_common::{auth, token, validate};

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:@+=-".contains(c)
}

proptest! {
    #[test]
    fn an_id_is_accepted_exactly_when_it_follows_the_rules(s in any::<String>()) {
        let ok = !s.is_empty() && s.len() <= validate::MAX_ID_LEN && s.chars().all(allowed);
        prop_assert_eq!(validate::id_problem(&s).is_none(), ok, "{:?}", s);
    }

    #[test]
    fn ids_shaped_like_keys_are_accepted(s in "[A-Za-z0-9._:@+=-]{1,128}") {
        prop_assert!(validate::id_problem(&s).is_none());
    }

    #[test]
    fn violations_never_panic(values in proptest::collection::vec(any::<String>(), 0..20), max in 0usize..30) {
        let mut v = validate::Violations::new();
        v.ids("user_ids", &values, max);
        v.text("display_name", values.first().map_or("", |s| s.as_str()), 64, false);
        let ok = v.check().is_ok();
        let expected = !values.is_empty()
            && values.len() <= max
            && values.iter().all(|s| validate::id_problem(s).is_none())
            && values.first().is_none_or(|s| s.chars().count() <= 64 && !s.chars().any(char::is_control));
        prop_assert_eq!(ok, expected);
    }

    #[test]
    fn page_tokens_round_trip_and_junk_never_panics(plain in "[ -~]{0,64}", junk in any::<String>()) {
        prop_assert_eq!(token::decode(&token::encode(&plain), 64), Some(plain));
        let _ = token::decode(&junk, 128);
    }

    #[test]
    fn credentials_parsing_never_panics(header in "[ -~]{0,100}", hex in any::<String>()) {
        let mut h = tonic::codegen::http::HeaderMap::new();
        if let Ok(v) = header.parse() {
            h.insert("authorization", v);
            if let Ok(t) = auth::bearer(&h) {
                prop_assert!(!t.is_empty() && !t.starts_with(' '));
            }
        }
        let _ = auth::parse_digest(&hex);
    }
}
