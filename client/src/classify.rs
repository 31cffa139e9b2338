//! What a failed attempt means: the error detail's fields decide (never its message
//! text); a status without a detail is a transport failure, which may have reached the
//! store unless the connection was never made (tonic reports that only in its words).
//!
//! Public for callers that send RPCs themselves (the generated clients in `proto`) and
//! want the client library's reading of the answer.

use prost::Message;
use stockpile_proto::v1 as pb;

use crate::{Error, RequestId};

/// The `ErrorDetail` of a status, if it carries one.
pub fn decode_detail(status: &tonic::Status) -> Option<pb::ErrorDetail> {
    if status.details().is_empty() {
        return None;
    }
    pb::ErrorDetail::decode(status.details())
        .ok()
        .filter(|d| d.reason() != pb::Reason::Unspecified)
}

/// True when a transport error shows the request never left: the connection could
/// not be made (an `io::Error` of connect(2) in the error's source chain). A reset or
/// broken connection may come after the node received the request, so it does not
/// count. Reads error types, never message text.
fn never_sent(status: &tonic::Status) -> bool {
    use std::io::ErrorKind::{
        AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable,
    };
    let mut source = std::error::Error::source(status);
    // Bounded: error chains are a few links long.
    for _ in 0..16 {
        let Some(s) = source else { return false };
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// What a failed attempt means for the call.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The store refused for good (or certainly did not apply): return it.
    Definite(Error),
    /// The node did not answer or the transport failed: try another node.
    NodeFailed {
        /// The request may have reached the store.
        maybe_applied: bool,
        /// What happened, for humans.
        message: String,
    },
    /// Not the leader: go to `hint` if there is one.
    NotLeader {
        /// The shard the node does not lead (0 when it did not say): another than the
        /// call's when the node's map places some of the call's SKUs elsewhere.
        shard_id: u64,
        /// The leader the node knows of.
        hint: Option<u64>,
        /// What happened, for humans.
        message: String,
    },
    /// No leader or no quorum, or the outcome of a proposal is unknown: forget the
    /// cached leader, back off, retry (with the same request id).
    Unavailable {
        /// The request may have been applied (its outcome is unknown).
        maybe_applied: bool,
        /// What happened, for humans.
        message: String,
    },
    /// Admission control: wait `retry_after_ms`, then retry the same node.
    RateLimited {
        /// How long the store asked to wait.
        retry_after_ms: u64,
        /// What happened, for humans.
        message: String,
    },
    /// The cached shard map is stale (the shard moved, or the node holds no replica).
    MapStale {
        /// What happened, for humans.
        message: String,
    },
}

/// Classifies a failed attempt from its status: the error detail's fields decide;
/// a status without one is a transport failure, which may have reached the store
/// unless the connection was never made.
pub fn classify(status: &tonic::Status, request_id: Option<RequestId>) -> Verdict {
    let Some(d) = decode_detail(status) else {
        return Verdict::NodeFailed {
            maybe_applied: !never_sent(status),
            message: status.message().to_string(),
        };
    };
    if let Some(definite) = Error::from_detail(&d, request_id) {
        return Verdict::Definite(definite);
    }
    let message = d.message.clone();
    match d.reason() {
        pb::Reason::NotLeader => Verdict::NotLeader {
            shard_id: d.shard_id,
            hint: (d.leader_id != 0).then_some(d.leader_id),
            message,
        },
        pb::Reason::RateLimited => Verdict::RateLimited {
            retry_after_ms: d.retry_after_ms,
            message,
        },
        pb::Reason::OutcomeUnknown => Verdict::Unavailable {
            maybe_applied: true,
            message,
        },
        pb::Reason::ShardMoved | pb::Reason::ShardNotHere => Verdict::MapStale { message },
        _ => Verdict::Unavailable {
            maybe_applied: false,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_never_sent_and_a_bare_status_may_have_been() {
        // Port 1 on loopback: nothing listens, connect(2) is refused.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let status = stockpile_proto::v1::inventory_client::InventoryClient::new(channel)
            .get(pb::GetRequest::default())
            .await
            .expect_err("nothing listens");
        assert!(never_sent(&status), "{status:?}");
        assert!(matches!(
            classify(&status, None),
            Verdict::NodeFailed {
                maybe_applied: false,
                ..
            }
        ));
        // The same words without the typed cause prove nothing.
        let text_only = tonic::Status::unavailable("tcp connect error: connection refused");
        assert!(!never_sent(&text_only));
    }

    fn status(code: tonic::Code, d: pb::ErrorDetail) -> tonic::Status {
        tonic::Status::with_details(code, d.message.clone(), d.encode_to_vec().into())
    }

    fn detail(reason: pb::Reason) -> pb::ErrorDetail {
        pb::ErrorDetail {
            reason: reason as i32,
            message: "m".into(),
            ..Default::default()
        }
    }

    #[test]
    fn refusals_are_definite_and_keep_their_fields() {
        let d = pb::ErrorDetail {
            sku: "a".into(),
            available: 2,
            ..detail(pb::Reason::InsufficientStock)
        };
        assert_eq!(
            classify(&status(tonic::Code::FailedPrecondition, d), None),
            Verdict::Definite(Error::InsufficientStock {
                sku: "a".into(),
                available: 2
            })
        );
    }

    #[test]
    fn leader_hints_are_followed_and_stale_maps_refreshed() {
        let d = pb::ErrorDetail {
            leader_id: 3,
            shard_id: 9,
            ..detail(pb::Reason::NotLeader)
        };
        assert!(matches!(
            classify(&status(tonic::Code::Unavailable, d), None),
            Verdict::NotLeader {
                shard_id: 9,
                hint: Some(3),
                ..
            }
        ));
        assert!(matches!(
            classify(
                &status(tonic::Code::Unavailable, detail(pb::Reason::NotLeader)),
                None
            ),
            Verdict::NotLeader { hint: None, .. }
        ));
        for reason in [pb::Reason::ShardNotHere, pb::Reason::ShardMoved] {
            assert!(matches!(
                classify(&status(tonic::Code::Unavailable, detail(reason)), None),
                Verdict::MapStale { .. }
            ));
        }
    }

    #[test]
    fn unknown_outcomes_and_transport_failures_may_have_been_applied() {
        assert!(matches!(
            classify(
                &status(tonic::Code::Unavailable, detail(pb::Reason::OutcomeUnknown)),
                Some([1; 16])
            ),
            Verdict::Unavailable {
                maybe_applied: true,
                ..
            }
        ));
        assert!(matches!(
            classify(
                &status(
                    tonic::Code::Unavailable,
                    detail(pb::Reason::ShardUnavailable)
                ),
                None
            ),
            Verdict::Unavailable {
                maybe_applied: false,
                ..
            }
        ));
        let reset = tonic::Status::unavailable("connection reset by peer");
        assert!(matches!(
            classify(&reset, Some([1; 16])),
            Verdict::NodeFailed {
                maybe_applied: true,
                ..
            }
        ));
        let refused = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(matches!(
            classify(&refused, Some([1; 16])),
            Verdict::NodeFailed {
                maybe_applied: false,
                ..
            }
        ));
        let d = pb::ErrorDetail {
            retry_after_ms: 40,
            ..detail(pb::Reason::RateLimited)
        };
        assert!(matches!(
            classify(&status(tonic::Code::ResourceExhausted, d), None),
            Verdict::RateLimited {
                retry_after_ms: 40,
                ..
            }
        ));
    }
}
