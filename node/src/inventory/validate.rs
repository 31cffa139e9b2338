//! Input rules of the API, checked before anything is proposed. Each failure names
//! the field and the rule, so a client can fix its request.

use super::apply::QTY_MAX;
use super::types::{Item, RequestId};

/// SKU length in bytes (DESIGN.md: 1..=128 bytes of UTF-8, no control characters).
pub const SKU_BYTES_MAX: usize = 128;
/// Reservation id length in bytes.
pub const RESERVATION_ID_BYTES_MAX: usize = 64;

/// Configurable limits (config `[limits]`); every one has a default.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Items in one reservation.
    pub reservation_items_max: usize,
    /// Operations in one Batch call.
    pub batch_ops_max: usize,
    /// Bytes of one request (its protobuf encoding) at most; larger requests are
    /// refused with REQUEST_TOO_LARGE before anything is proposed.
    pub request_bytes_max: usize,
    /// SKUs in one Get call.
    pub get_skus_max: usize,
    /// Records in one List page.
    pub list_limit_max: u32,
    /// Shortest and longest reservation time-to-live.
    pub ttl_ms_min: u64,
    pub ttl_ms_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            reservation_items_max: 100,
            batch_ops_max: 10_000,
            request_bytes_max: 4 << 20,
            get_skus_max: 1_000,
            list_limit_max: 1_000,
            ttl_ms_min: 1_000,
            ttl_ms_max: 7 * 24 * 3_600_000,
        }
    }
}

/// An input rule broken: which field, and what the rule is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {rule}")]
pub struct Invalid {
    pub field: String,
    pub rule: String,
}

pub fn invalid(field: impl Into<String>, rule: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        rule: rule.into(),
    }
}

/// The SKU policy (docs/ERRORS.md, "SKU policy"), enforced here and nowhere else:
/// 1..=128 bytes of UTF-8 in Unicode Normalization Form C; no control, format
/// (invisible), private-use, surrogate or unassigned code points (noncharacters are
/// unassigned), no line or paragraph separators, no invisible fillers, no whitespace
/// but the ASCII space, and no space at either end. Two SKUs that look alike should be
/// one SKU: so a name is refused, never silently rewritten, when it breaks a rule.
pub fn sku(field: &str, sku: &str) -> Result<(), Invalid> {
    if sku.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if sku.len() > SKU_BYTES_MAX {
        return Err(invalid(
            field,
            format!("is {} bytes, the limit is {SKU_BYTES_MAX}", sku.len()),
        ));
    }
    if let Some((c, why)) = sku
        .chars()
        .find_map(|c| refused_char(c).map(|why| (c, why)))
    {
        return Err(invalid(
            field,
            format!("contains U+{:04X}, {why}", c as u32),
        ));
    }
    if sku.starts_with(' ') || sku.ends_with(' ') {
        return Err(invalid(field, "must not begin or end with a space"));
    }
    if !unicode_normalization::is_nfc(sku) {
        use unicode_normalization::UnicodeNormalization;
        let nfc: String = sku.nfc().collect();
        return Err(invalid(
            field,
            format!("is not in Unicode Normalization Form C; send its NFC form {nfc:?}"),
        ));
    }
    Ok(())
}

/// Why a character may not appear in a SKU, or None when it may.
fn refused_char(c: char) -> Option<&'static str> {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    // Printable ASCII and the space, almost every SKU's every character, are allowed:
    // answered without the Unicode tables (1% of a loaded leader's samples).
    if c.is_ascii_graphic() || c == ' ' {
        return None;
    }
    match c.general_category() {
        G::Control => return Some("a control character"),
        G::Format => return Some("an invisible format character (Unicode Cf)"),
        G::LineSeparator | G::ParagraphSeparator => {
            return Some("a line or paragraph separator");
        }
        G::PrivateUse => return Some("a private-use character"),
        G::Surrogate => return Some("a surrogate"),
        G::Unassigned => return Some("an unassigned code point or a noncharacter"),
        _ => {}
    }
    if c.is_whitespace() {
        return Some("whitespace other than the ASCII space");
    }
    // Hangul fillers are letters by category but render as nothing.
    if matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}') {
        return Some("an invisible filler character");
    }
    None
}

pub fn request_id(field: &str, bytes: &[u8]) -> Result<RequestId, Invalid> {
    if bytes.is_empty() {
        return Err(invalid(
            field,
            "is missing: every mutation needs a 16-byte request id",
        ));
    }
    let id: RequestId = bytes.try_into().map_err(|_| {
        invalid(
            field,
            format!("must be exactly 16 bytes, got {}", bytes.len()),
        )
    })?;
    if id == [0u8; 16] {
        return Err(invalid(field, "must not be all zeros"));
    }
    Ok(id)
}

/// A positive quantity (decrement, reservation item).
pub fn quantity(field: &str, qty: u64) -> Result<(), Invalid> {
    if qty == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    if qty > QTY_MAX {
        return Err(invalid(
            field,
            format!("{qty} exceeds the maximum quantity {QTY_MAX}"),
        ));
    }
    Ok(())
}

/// An absolute stock level (may be zero).
pub fn on_hand(field: &str, qty: u64) -> Result<(), Invalid> {
    if qty > QTY_MAX {
        return Err(invalid(
            field,
            format!("{qty} exceeds the maximum quantity {QTY_MAX}"),
        ));
    }
    Ok(())
}

pub fn delta(field: &str, delta: i64) -> Result<(), Invalid> {
    if delta == 0 {
        return Err(invalid(field, "must not be zero"));
    }
    if delta.unsigned_abs() > QTY_MAX {
        return Err(invalid(
            field,
            format!("{delta} exceeds the maximum quantity {QTY_MAX} in magnitude"),
        ));
    }
    Ok(())
}

/// Marks reservation ids the store derives from a request id; a client cannot choose
/// an id that starts with it, so a derived id never collides with a chosen one.
pub const DERIVED_RESERVATION_ID_PREFIX: char = '~';

/// The id the store gives a reservation whose request names none: `~` and the
/// request id in 32 lowercase hex digits.
pub fn derived_reservation_id(request_id: &RequestId) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(33);
    s.push(DERIVED_RESERVATION_ID_PREFIX);
    for b in request_id {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A reservation id a client chooses (`Reserve`): 1..=64 bytes of A-Z a-z 0-9 . _ : -
pub fn chosen_reservation_id(field: &str, id: &str) -> Result<(), Invalid> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > RESERVATION_ID_BYTES_MAX {
        return Err(invalid(
            field,
            format!(
                "is {} bytes, the limit is {RESERVATION_ID_BYTES_MAX}",
                id.len()
            ),
        ));
    }
    if id.starts_with(DERIVED_RESERVATION_ID_PREFIX) {
        return Err(invalid(
            field,
            format!(
                "starts with {DERIVED_RESERVATION_ID_PREFIX:?}, which marks ids the store derives; leave it empty to get one"
            ),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(invalid(
            field,
            format!("contains {c:?}; allowed are A-Z a-z 0-9 . _ : -"),
        ));
    }
    Ok(())
}

/// A reservation id a request refers to (`Confirm`, `Release`, `GetReservation`):
/// one a client chose, or one the store derived.
pub fn reservation_id(field: &str, id: &str) -> Result<(), Invalid> {
    match id.strip_prefix(DERIVED_RESERVATION_ID_PREFIX) {
        Some(hex) => {
            if hex.len() == 32 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!(
                        "starts with {DERIVED_RESERVATION_ID_PREFIX:?} but is not a derived id ({DERIVED_RESERVATION_ID_PREFIX} and 32 lowercase hex digits)"
                    ),
                ))
            }
        }
        None => chosen_reservation_id(field, id),
    }
}

pub fn ttl_ms(field: &str, ttl_ms: u64, limits: &Limits) -> Result<(), Invalid> {
    if ttl_ms < limits.ttl_ms_min || ttl_ms > limits.ttl_ms_max {
        return Err(invalid(
            field,
            format!(
                "{ttl_ms} ms is outside {}..={} ms",
                limits.ttl_ms_min, limits.ttl_ms_max
            ),
        ));
    }
    Ok(())
}

pub fn items(field: &str, items: &[Item], limits: &Limits) -> Result<(), Invalid> {
    if items.is_empty() {
        return Err(invalid(field, "must hold at least one item"));
    }
    if items.len() > limits.reservation_items_max {
        return Err(invalid(
            field,
            format!(
                "holds {} items, the limit is {}",
                items.len(),
                limits.reservation_items_max
            ),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        sku(&format!("{field}[{i}].sku"), &item.sku)?;
        quantity(&format!("{field}[{i}].quantity"), item.qty)?;
        if !seen.insert(item.sku.as_str()) {
            return Err(invalid(
                format!("{field}[{i}].sku"),
                format!("SKU {:?} appears twice", item.sku),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus() {
        assert!(sku("sku", "ABC-123").is_ok());
        assert!(sku("sku", "é").is_ok());
        assert_eq!(
            sku("sku", "").unwrap_err().to_string(),
            "invalid sku: must not be empty"
        );
        let long = "x".repeat(129);
        assert_eq!(
            sku("sku", &long).unwrap_err().to_string(),
            "invalid sku: is 129 bytes, the limit is 128"
        );
        assert!(sku("sku", &"x".repeat(128)).is_ok());
        assert_eq!(
            sku("skus[2]", "a\nb").unwrap_err().to_string(),
            "invalid skus[2]: contains U+000A, a control character"
        );
        assert!(
            sku("sku", "red shirt XL").is_ok(),
            "inner ASCII spaces are fine"
        );
        assert!(sku("sku", "caf\u{e9}").is_ok(), "NFC");
    }

    /// The ASCII fast path in `refused_char` answers as the Unicode tables do, for
    /// every ASCII character.
    #[test]
    fn ascii_fast_path_agrees_with_the_tables() {
        use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
        for b in 0u8..=127 {
            let c = char::from(b);
            let by_tables = c != ' '
                && (c.is_whitespace() || matches!(c.general_category(), G::Control | G::Format));
            assert_eq!(refused_char(c).is_some(), by_tables, "U+{b:04X}");
        }
    }

    #[test]
    fn sku_policy_refuses_look_alikes_and_invisibles() {
        let refused = [
            ("abc\u{202E}def", "U+202E, an invisible format character"),
            ("a\u{200B}b", "U+200B, an invisible format character"),
            ("\u{FEFF}apple", "U+FEFF, an invisible format character"),
            ("a\u{2028}b", "U+2028, a line or paragraph separator"),
            ("a\u{2029}b", "U+2029, a line or paragraph separator"),
            (
                "a\u{FFFF}",
                "U+FFFF, an unassigned code point or a noncharacter",
            ),
            (
                "a\u{FDD0}",
                "U+FDD0, an unassigned code point or a noncharacter",
            ),
            ("a\u{E000}", "U+E000, a private-use character"),
            (
                "a\u{00A0}b",
                "U+00A0, whitespace other than the ASCII space",
            ),
            (
                "a\u{3000}b",
                "U+3000, whitespace other than the ASCII space",
            ),
            ("\u{3164}", "U+3164, an invisible filler character"),
            (" apple", "must not begin or end with a space"),
            ("apple ", "must not begin or end with a space"),
            ("   ", "must not begin or end with a space"),
            ("cafe\u{301}", "not in Unicode Normalization Form C"),
        ];
        for (input, expected) in refused {
            let err = sku("items[0].sku", input).expect_err(input);
            assert_eq!(err.field, "items[0].sku");
            assert!(err.rule.contains(expected), "{input:?}: {}", err.rule);
        }
        let nfd = sku("sku", "cafe\u{301}").unwrap_err();
        assert!(nfd.rule.contains("\"caf\u{e9}\""), "{}", nfd.rule);
    }

    #[test]
    fn request_ids() {
        assert!(request_id("request_id", &[1; 16]).is_ok());
        assert!(
            request_id("request_id", &[])
                .unwrap_err()
                .rule
                .contains("missing")
        );
        assert!(
            request_id("request_id", &[1; 15])
                .unwrap_err()
                .rule
                .contains("exactly 16 bytes, got 15")
        );
        assert!(
            request_id("request_id", &[0; 16])
                .unwrap_err()
                .rule
                .contains("zeros")
        );
    }

    #[test]
    fn quantities() {
        assert!(
            quantity("quantity", 0)
                .unwrap_err()
                .rule
                .contains("at least 1")
        );
        assert!(quantity("quantity", QTY_MAX).is_ok());
        assert!(
            quantity("quantity", QTY_MAX + 1)
                .unwrap_err()
                .rule
                .contains("exceeds")
        );
        assert!(on_hand("on_hand", 0).is_ok());
        assert!(delta("delta", 0).is_err());
        assert!(
            delta("delta", i64::MIN)
                .unwrap_err()
                .rule
                .contains("magnitude")
        );
        assert!(delta("delta", -5).is_ok());
    }

    #[test]
    fn derived_reservation_ids_live_where_clients_cannot_choose() {
        let derived = derived_reservation_id(&[0xab; 16]);
        assert_eq!(derived, format!("~{}", "ab".repeat(16)));
        assert!(reservation_id("reservation_id", &derived).is_ok());
        let err = chosen_reservation_id("reservation_id", &derived).unwrap_err();
        assert!(
            err.rule.contains("marks ids the store derives"),
            "{}",
            err.rule
        );
        assert!(reservation_id("reservation_id", "~abc").is_err());
        assert!(reservation_id("reservation_id", &format!("~{}", "AB".repeat(16))).is_err());
    }

    #[test]
    fn reservations() {
        let limits = Limits::default();
        assert!(reservation_id("reservation_id", "cart-42:a_b.c").is_ok());
        assert!(
            reservation_id("reservation_id", "a b")
                .unwrap_err()
                .rule
                .contains("' '")
        );
        assert!(ttl_ms("ttl_ms", 0, &limits).is_err());
        assert!(ttl_ms("ttl_ms", 30_000, &limits).is_ok());
        let two = vec![
            Item {
                sku: "a".into(),
                qty: 1,
            },
            Item {
                sku: "a".into(),
                qty: 2,
            },
        ];
        let err = items("items", &two, &limits).unwrap_err();
        assert_eq!(err.field, "items[1].sku");
        assert!(items("items", &[], &limits).is_err());
        let zero = vec![Item {
            sku: "a".into(),
            qty: 0,
        }];
        assert_eq!(
            items("items", &zero, &limits).unwrap_err().field,
            "items[0].quantity"
        );
    }
}
