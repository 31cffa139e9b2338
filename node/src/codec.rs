//! Every encoding Stockpile stores or sends between nodes: bincode 2 (serde mode,
//! standard config) behind a leading format-version byte, so a node can refuse data
//! written by a format it does not know instead of misreading it.
//!
//! A leaf: it knows no Stockpile type, so every module may use it and it uses none.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format of every encoded value. Bump it when an encoded type changes shape.
///
/// History: 1 = first release; 2 = `Confirm`/`Release` carry their routing SKU (checked
/// against the reservation's items at apply); 3 = `SetStock`/`AdjustStock` carry an
/// optional `expected_version` and `Rejection::VersionMismatch` exists (conditional
/// writes, HTTP's If-Match); 4 = the outcome-age index holds one record per entry
/// (its key: applied ms, origin shard, log index; its value: the request ids) instead
/// of one empty-valued key per outcome. Data of an older format is refused at
/// start (`node::check_identity`), never misread.
pub const FORMAT_VERSION: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value: expected a format version byte")]
    Empty,
    #[error("unknown format version {found} (this build reads version {FORMAT_VERSION})")]
    UnknownFormatVersion { found: u8 },
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot decode: {trailing} trailing bytes")]
    Trailing { trailing: usize },
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// The most bytes one decode may claim: a length prefix beyond it (a corrupt value, a
/// hostile peer) fails fast instead of allocating. Above any entry, Raft message or
/// stored value Stockpile produces (`ClusterConfig::raft_message_bytes_max` is checked
/// against it).
pub const DECODE_BYTES_MAX: usize = 256 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_BYTES_MAX>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownFormatVersion { found: version });
    }
    let (value, read) = bincode::serde::decode_from_slice(body, config())?;
    if read != body.len() {
        return Err(CodecError::Trailing {
            trailing: body.len() - read,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Command, Item, StockRecord};

    #[test]
    fn round_trips() {
        let rec = StockRecord {
            on_hand: 10,
            reserved: 3,
            version: 9,
        };
        let bytes = encode(&rec).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<StockRecord>(&bytes).unwrap(), rec);
        let cmd = Command::Reserve {
            reservation_id: "r".into(),
            items: vec![Item {
                sku: "a".into(),
                qty: 2,
            }],
            ttl_ms: 5,
        };
        assert_eq!(decode::<Command>(&encode(&cmd).unwrap()).unwrap(), cmd);
    }

    #[test]
    fn rejects_unknown_format_version() {
        let mut bytes = encode(&StockRecord::default()).unwrap();
        bytes[0] = FORMAT_VERSION + 1;
        let err = decode::<StockRecord>(&bytes).unwrap_err();
        assert!(
            matches!(err, CodecError::UnknownFormatVersion { found } if found == FORMAT_VERSION + 1),
            "{err}"
        );
        assert!(err.to_string().contains("unknown format version"));
        assert!(matches!(decode::<StockRecord>(&[]), Err(CodecError::Empty)));
    }

    #[test]
    fn rejects_trailing_and_truncated_bytes() {
        let mut bytes = encode(&StockRecord {
            on_hand: 1,
            reserved: 0,
            version: 1,
        })
        .unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<StockRecord>(&bytes),
            Err(CodecError::Trailing { trailing: 1 })
        ));
        let bytes = encode(&"a long enough string".to_string()).unwrap();
        assert!(decode::<String>(&bytes[..5]).is_err());
    }
}
