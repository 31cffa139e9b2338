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
    if let Some(c) = sku.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            format!("contains control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
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

pub fn reservation_id(field: &str, id: &str) -> Result<(), Invalid> {
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
            "invalid skus[2]: contains control character U+000A"
        );
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
