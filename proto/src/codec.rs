//! The servers' request codec: prost's encoding, but a request that cannot be decoded
//! (a string field that is not UTF-8, a truncated message, a wrong wire type) is
//! answered `INVALID_ARGUMENT` with an `ErrorDetail` naming the field, never
//! `INTERNAL`, which docs/ERRORS.md defines as "outcome unknown, retry".
//!
//! Only servers use it (build.rs): a client that cannot decode a reply must not take
//! that for a refusal of its own argument.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::v1;

/// prost encoding out, field-naming decode failures in.
#[derive(Debug)]
pub struct RequestCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _type: PhantomData }
    }
}

/// Decodes one request message; see the module documentation.
#[derive(Debug)]
pub struct RequestDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| undecodable(&e))
    }
}

/// The status for a request prost could not decode: INVALID_ARGUMENT, with the field
/// path (outermost first, e.g. `ops.op.items.sku`) or `request` when prost names none.
pub fn undecodable(e: &prost::DecodeError) -> Status {
    let (field, problem) = field_path(&e.to_string());
    let message = format!("invalid {field}: cannot decode the request: {problem}");
    let detail = v1::ErrorDetail {
        reason: v1::Reason::InvalidArgument as i32,
        message: message.clone(),
        rule: format!("cannot decode the request: {problem}"),
        field,
        ..Default::default()
    };
    Status::with_details(
        tonic::Code::InvalidArgument,
        message,
        detail.encode_to_vec().into(),
    )
}

/// Splits prost's message ("failed to decode Protobuf message: Item.sku:
/// ReserveRequest.items: invalid string value: ...", innermost field first) into the
/// field path, outermost first, and the problem. prost keeps the path private, so its
/// text is the only source; anything unexpected falls back to `request`.
fn field_path(text: &str) -> (String, String) {
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(text);
    let mut fields = Vec::new();
    // Bounded by the text: each step consumes one "Message.field: " segment.
    while let Some((segment, tail)) = rest.split_once(": ") {
        match segment.split_once('.') {
            Some((message, field)) if is_ident(message) && is_ident(field) => {
                fields.push(field);
                rest = tail;
            }
            _ => break,
        }
    }
    fields.reverse();
    let field = if fields.is_empty() {
        "request".to_string()
    } else {
        fields.join(".")
    };
    (field, rest.to_string())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail_of(status: &Status) -> v1::ErrorDetail {
        v1::ErrorDetail::decode(status.details()).expect("an ErrorDetail")
    }

    #[test]
    fn invalid_utf8_names_the_nested_field() {
        let mut bytes = v1::BatchRequest {
            ops: vec![v1::Operation {
                op: Some(v1::operation::Op::Reserve(v1::ReserveRequest {
                    items: vec![v1::Item {
                        sku: "abc".into(),
                        quantity: 1,
                    }],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let at = bytes
            .windows(3)
            .position(|w| w == b"abc")
            .expect("the SKU's bytes");
        bytes[at] = 0xff;
        let err = v1::BatchRequest::decode(bytes.as_slice()).unwrap_err();
        let status = undecodable(&err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let d = detail_of(&status);
        assert_eq!(d.reason(), v1::Reason::InvalidArgument);
        assert_eq!(d.field, "ops.op.items.sku");
        assert!(d.message.contains("UTF-8"), "{}", d.message);
    }

    #[test]
    fn truncated_requests_name_the_request() {
        let bytes = v1::SetStockRequest {
            sku: "a-long-enough-sku".into(),
            on_hand: 5,
            request_id: vec![7; 16],
            expected_version: None,
        }
        .encode_to_vec();
        for cut in 1..bytes.len() {
            let Err(err) = v1::SetStockRequest::decode(&bytes[..cut]) else {
                continue; // a prefix that ends on a field boundary is a valid message
            };
            let status = undecodable(&err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            let d = detail_of(&status);
            assert!(!d.field.is_empty());
            assert!(d.message.starts_with(&format!("invalid {}: ", d.field)));
        }
    }

    #[test]
    fn unexpected_text_falls_back_to_the_request() {
        assert_eq!(
            field_path("something else entirely"),
            ("request".into(), "something else entirely".into())
        );
        assert_eq!(
            field_path("failed to decode Protobuf message: A.b: C.d: boom: detail"),
            ("d.b".into(), "boom: detail".into())
        );
    }
}
