//! Execution names: the one function that turns a key into a valid, deterministic name.
//!
//! Rules (Step Functions): 1–80 characters; no whitespace; none of
//! `? * < > { } [ ] " # % \ ^ | ~ ` $ & , ; : /`; no control characters. Non-ASCII is
//! allowed by AWS but breaks CloudWatch metrics, so names here are ASCII only.
//!
//! Invariant: the same key always gives the same name, and two different keys give two
//! different names (up to a 2^-80 hash collision): a key that is already a valid name is
//! used as is; any other key becomes a readable prefix (unsafe characters replaced by `_`)
//! plus `-` and 20 hex digits of the SHA-256 of the whole key. (A valid key written to
//! look exactly like another key's hashed form would share its name; keys are trusted.)

use sha2::{Digest, Sha256};

/// The longest execution name Step Functions accepts, in characters.
pub const MAX_NAME_LEN: usize = 80;

/// Hex digits of the SHA-256 kept in a hashed name (80 bits).
const HASH_HEX_LEN: usize = 20;

/// Characters Step Functions forbids in names (besides whitespace and control characters).
const FORBIDDEN: &[char] = &[
    '?', '*', '<', '>', '{', '}', '[', ']', '"', '#', '%', '\\', '^', '|', '~', '`', '$', '&', ',', ';', ':', '/',
];

/// Whether `c` may appear in a name we produce: printable ASCII, not whitespace, not forbidden.
pub fn is_safe_char(c: char) -> bool {
    c.is_ascii_graphic() && !FORBIDDEN.contains(&c)
}

/// Whether `name` is a valid execution name as this module produces them.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.chars().all(is_safe_char)
}

/// Derives the execution name for `key`. `None` when the key is empty: no usable name.
pub fn execution_name(key: &[u8]) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    if let Ok(text) = std::str::from_utf8(key) {
        if is_valid_name(text) {
            return Some(text.to_string());
        }
    }
    let digest = Sha256::digest(key);
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect::<String>()[..HASH_HEX_LEN].to_string();
    let readable = String::from_utf8_lossy(key);
    let prefix: String = readable
        .chars()
        .map(|c| if is_safe_char(c) { c } else { '_' })
        .take(MAX_NAME_LEN - HASH_HEX_LEN - 1)
        .collect();
    let prefix = prefix.trim_matches('_');
    if prefix.is_empty() {
        Some(hash)
    } else {
        Some(format!("{prefix}-{hash}"))
    }
}

/// A random execution name, as AWS picks one when StartExecution gets none: a version 4 UUID.
pub fn random_name() -> String {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_key_is_used_as_is() {
        let id = "059f36b4-87a3-44ab-83d2-661975830a7d";
        assert_eq!(execution_name(id.as_bytes()).unwrap(), id);
        let longest = "a".repeat(80);
        assert_eq!(execution_name(longest.as_bytes()).unwrap(), longest);
        assert_eq!(execution_name(b"order_42.v1=ok").unwrap(), "order_42.v1=ok");
    }

    #[test]
    fn an_empty_key_has_no_name() {
        assert_eq!(execution_name(b""), None);
    }

    #[test]
    fn every_forbidden_character_is_replaced_and_the_name_hashed() {
        for c in FORBIDDEN
            .iter()
            .copied()
            .chain([' ', '\t', '\n', '\u{7f}', '\u{1}', 'é', '\u{200b}'])
        {
            let key = format!("order{c}42");
            let name = execution_name(key.as_bytes()).unwrap();
            assert!(is_valid_name(&name), "{key:?} -> {name:?}");
            assert!(name.starts_with("order_42-"), "{key:?} -> {name:?}");
            assert_eq!(name.len(), "order_42-".len() + HASH_HEX_LEN);
        }
    }

    #[test]
    fn a_key_of_every_forbidden_character_still_gets_a_name() {
        let key: String = FORBIDDEN.iter().collect();
        let name = execution_name(key.as_bytes()).unwrap();
        assert!(is_valid_name(&name));
        assert_eq!(
            name.len(),
            HASH_HEX_LEN,
            "nothing readable is left: the name is the hash"
        );
    }

    #[test]
    fn long_keys_are_cut_to_80_with_a_hash() {
        let key = "k".repeat(81);
        let name = execution_name(key.as_bytes()).unwrap();
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(is_valid_name(&name));
        let other = format!("{}x", "k".repeat(80));
        assert_ne!(
            execution_name(other.as_bytes()).unwrap(),
            name,
            "same prefix, different keys"
        );
    }

    #[test]
    fn names_are_deterministic_and_distinct() {
        let a = execution_name(b"a/b").unwrap();
        assert_eq!(a, execution_name(b"a/b").unwrap());
        assert_ne!(
            a,
            execution_name(b"a:b").unwrap(),
            "both read a_b, the hash tells them apart"
        );
        // Known value: SHA-256("a/b") starts with these 20 hex digits.
        let expected: String = Sha256::digest(b"a/b")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..20]
            .to_string();
        assert_eq!(a, format!("a_b-{expected}"));
    }

    #[test]
    fn random_names_are_valid_and_differ() {
        let (a, b) = (random_name(), random_name());
        assert!(is_valid_name(&a) && a.len() == 36, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn invalid_utf8_keys_are_hashed() {
        let name = execution_name(&[0x66, 0x6f, 0xff, 0x6f]).unwrap();
        assert!(is_valid_name(&name));
        assert!(name.starts_with("fo_o-"), "{name}");
    }
}
