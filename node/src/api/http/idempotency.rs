//! `Idempotency-Key` ↔ request id. A key that is a request id already (32 hex digits,
//! or a UUID: what the CLI and gRPC clients use) is those 16 bytes, so the same
//! operation sent over gRPC and HTTP is recognised as one; any other key (1..=255
//! visible ASCII characters) is hashed (SHA-256, first 16 bytes, domain-separated).
//! Without a key the node makes one and returns it, so the caller can retry safely.

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::inventory::RequestId;

pub const HEADER: &str = "idempotency-key";

/// Longest key accepted (Stripe's limit).
const KEY_CHARS_MAX: usize = 255;

/// The key a request carries or the one made for it, and its request id.
pub struct Key {
    pub text: String,
    pub request_id: RequestId,
}

impl Key {
    /// From the request's header, or a fresh one.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Result<Key, Error> {
        match headers.get(HEADER) {
            None => Ok(Key::fresh()),
            Some(value) => {
                let text = value.to_str().map_err(|_| bad("must be visible ASCII"))?;
                Key::parse(text)
            }
        }
    }

    pub fn parse(text: &str) -> Result<Key, Error> {
        if text.is_empty() || text.len() > KEY_CHARS_MAX {
            return Err(bad("must be 1..=255 characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("must be visible ASCII without spaces"));
        }
        let request_id = direct(text).unwrap_or_else(|| hashed(text.as_bytes(), None));
        if request_id == [0u8; 16] {
            return Err(bad("must not be all zeros"));
        }
        Ok(Key {
            text: text.to_string(),
            request_id,
        })
    }

    fn fresh() -> Key {
        let mut request_id: RequestId = rand::random();
        request_id[0] |= 1; // never all zeros
        Key {
            text: hex(&request_id),
            request_id,
        }
    }

    /// The request id of a batch's `index`-th operation: distinct per operation and
    /// the same on every retry of the batch with this key.
    pub fn for_op(&self, index: usize) -> RequestId {
        hashed(self.text.as_bytes(), Some(index))
    }
}

fn bad(rule: &str) -> Error {
    Error::InvalidArgument {
        field: "Idempotency-Key".into(),
        rule: rule.into(),
    }
}

/// 32 hex digits, with or without a UUID's hyphens.
fn direct(text: &str) -> Option<RequestId> {
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    let uuid_shaped = text.len() == 36 && text.matches('-').count() == 4;
    if digits.len() != 32 || !(text.len() == 32 || uuid_shaped) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

fn hashed(key: &[u8], index: Option<usize>) -> RequestId {
    let mut hasher = Sha256::new();
    hasher.update(b"stockpile idempotency key\0");
    hasher.update(key);
    if let Some(i) = index {
        hasher.update(b"\0op\0");
        hasher.update((i as u64).to_be_bytes());
    }
    let digest = hasher.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hex_or_uuid_key_is_the_request_id_itself() {
        let hex_key = Key::parse("0123456789abcdef0123456789abcdef").unwrap();
        let uuid_key = Key::parse("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        assert_eq!(hex_key.request_id, uuid_key.request_id);
        assert_eq!(hex_key.request_id[0], 0x01);
        assert_eq!(hex_key.request_id[15], 0xef);
    }

    #[test]
    fn other_keys_hash_stably_and_ops_get_distinct_ids() {
        let a = Key::parse("order-1234/attempt").unwrap();
        let b = Key::parse("order-1234/attempt").unwrap();
        assert_eq!(a.request_id, b.request_id);
        assert_ne!(
            a.request_id,
            Key::parse("order-1235/attempt").unwrap().request_id
        );
        assert_ne!(a.for_op(0), a.for_op(1));
        assert_ne!(a.for_op(0), a.request_id);
    }

    #[test]
    fn bad_keys_are_refused_naming_the_header() {
        for key in [
            "",
            "has space",
            &"x".repeat(256),
            "00000000000000000000000000000000",
        ] {
            let Err(Error::InvalidArgument { field, .. }) = Key::parse(key) else {
                panic!("{key:?} was accepted");
            };
            assert_eq!(field, "Idempotency-Key");
        }
    }

    #[test]
    fn a_fresh_key_round_trips() {
        let key = Key::fresh();
        assert_eq!(Key::parse(&key.text).unwrap().request_id, key.request_id);
    }
}
