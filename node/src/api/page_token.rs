//! List page tokens: an opaque, versioned encoding of a position in SKU order. A
//! token holds no server state, so it stays valid across leader changes and
//! restarts for as long as the cluster runs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Error;
use crate::inventory::validate;

const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// Resume with the first SKU greater than this one.
    After(String),
    /// Resume with the first SKU greater than or equal to this one (a shard boundary).
    AtOrAfter(String),
}

pub fn encode(p: &Position) -> String {
    let (kind, sku) = match p {
        Position::After(s) => (0u8, s),
        Position::AtOrAfter(s) => (1u8, s),
    };
    let mut bytes = Vec::with_capacity(2 + sku.len());
    bytes.push(VERSION);
    bytes.push(kind);
    bytes.extend_from_slice(sku.as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode(token: &str) -> Result<Position, Error> {
    let bad = |rule: &str| Error::InvalidArgument {
        field: "page_token".into(),
        rule: rule.into(),
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad("is not a token this service issued (bad encoding)"))?;
    if bytes.len() < 2 || bytes[0] != VERSION {
        return Err(bad("is not a token this service issued (unknown version)"));
    }
    let sku =
        String::from_utf8(bytes[2..].to_vec()).map_err(|_| bad("is corrupt (SKU is not UTF-8)"))?;
    validate::sku("page_token", &sku).map_err(|_| bad("is corrupt (bad SKU)"))?;
    match bytes[1] {
        0 => Ok(Position::After(sku)),
        1 => Ok(Position::AtOrAfter(sku)),
        _ => Err(bad("is corrupt (unknown position kind)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        for p in [
            Position::After("sku-1".into()),
            Position::AtOrAfter("g".into()),
            Position::After("é/ü".into()),
        ] {
            assert_eq!(decode(&encode(&p)).unwrap(), p);
        }
        for bad in ["!!!", "", "AA", &URL_SAFE_NO_PAD.encode([9u8, 0, b'a'])] {
            let e = decode(bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument { field, .. } if field == "page_token"),
                "{bad}: {e}"
            );
        }
    }
}
