//! The Admin service's replica move: the request checked and turned into
//! `node::MoveOptions`, the report into the reply (the procedure is `node::moves`).

use std::time::Duration;

use stockpile_proto::v1 as pb;

use crate::error::Error;
use crate::node::{MoveOptions, Node};
use crate::router::ShardId;

/// The catch-up deadline when the request names none.
const CATCH_UP_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// The longest catch-up deadline a request may ask for (a learner is never left
/// catching up forever).
const CATCH_UP_TIMEOUT_MAX_MS: u64 = 600_000;

pub async fn move_replica(
    node: &Node,
    req: pb::MoveReplicaRequest,
) -> Result<pb::MoveReplicaReply, Error> {
    let timeout_ms = match req.catch_up_timeout_ms {
        0 => CATCH_UP_TIMEOUT_DEFAULT_MS,
        t if t > CATCH_UP_TIMEOUT_MAX_MS => {
            return Err(Error::InvalidArgument {
                field: "catch_up_timeout_ms".into(),
                rule: format!("at most {CATCH_UP_TIMEOUT_MAX_MS} ms, got {t}"),
            });
        }
        t => t,
    };
    let options = MoveOptions {
        from: req.from_node_id,
        to: req.to_node_id,
        catch_up_timeout: Duration::from_millis(timeout_ms),
        from_dead: req.from_dead,
    };
    let report = node.move_replica(ShardId(req.shard_id), options).await?;
    tracing::info!(
        shard_id = req.shard_id,
        from = req.from_node_id,
        to = req.to_node_id,
        steps = ?report.steps,
        "replica move"
    );
    Ok(pb::MoveReplicaReply {
        steps: report.steps,
        replicas: report.replicas,
        conf_ver: report.conf_ver,
        replica_id: report.replica_id,
    })
}
