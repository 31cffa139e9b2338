//! A snapshot on the wire, both directions: the sender reads the snapshot file lazily
//! into `SnapshotChunk`s (the first carries the encoded vote and meta), the receiver
//! writes them to a file and checks them: one shard, contiguous offsets, a last chunk
//! marked `done`, and never a pause longer than the chunk timeout (a stalled sender
//! must not hold a receive slot forever).

use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use stockpile_proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Who sends, for which shard, and the header the first chunk carries.
pub struct Outgoing {
    pub shard_id: u64,
    pub from_node_id: u64,
    pub to_replica_id: u64,
    pub chunk_bytes: usize,
    pub vote: Vec<u8>,
    pub meta: Vec<u8>,
}

/// The chunks of `file`, read as the stream is polled. A read error ends the stream
/// without a `done` chunk, which the receiver rejects.
pub fn chunks<R>(file: R, out: Outgoing) -> impl Stream<Item = pb::SnapshotChunk>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let Outgoing {
        shard_id,
        from_node_id,
        to_replica_id,
        chunk_bytes,
        vote,
        meta,
    } = out;
    futures::stream::unfold(
        Some((file, 0u64, Some((vote, meta)))),
        move |state| async move {
            let (mut file, offset, header) = state?;
            let mut data = vec![0u8; chunk_bytes];
            let mut filled = 0;
            while filled < data.len() {
                match file.read(&mut data[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        tracing::warn!(shard_id, error = %e, "reading a snapshot file failed");
                        return None;
                    }
                }
            }
            data.truncate(filled);
            let done = filled < chunk_bytes;
            let (vote, meta) = header.unwrap_or_default();
            let chunk = pb::SnapshotChunk {
                shard_id,
                from_node_id,
                vote,
                meta,
                offset,
                data,
                done,
                to_replica_id,
            };
            let next = (!done).then_some((file, offset + filled as u64, None));
            Some((chunk, next))
        },
    )
}

/// Why a snapshot stream was not received whole.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("no snapshot chunk within {0} ms")]
    Stalled(u128),
    #[error(
        "snapshot chunk for shard {got_shard} at offset {got_offset}, expected shard {shard_id} at offset {offset}"
    )]
    OutOfOrder {
        shard_id: u64,
        offset: u64,
        got_shard: u64,
        got_offset: u64,
    },
    #[error("the snapshot stream ended before its last chunk")]
    Truncated,
    #[error("snapshot stream: {0}")]
    Transport(String),
    #[error("writing the snapshot file: {0}")]
    Io(#[from] std::io::Error),
}

/// The next chunk, or `Stalled` when none comes within `timeout`.
pub async fn next_chunk<S>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<pb::SnapshotChunk>, ReceiveError>
where
    S: Stream<Item = Result<pb::SnapshotChunk, tonic::Status>> + Unpin,
{
    match tokio::time::timeout(timeout, stream.next()).await {
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(Some(Err(status))) => Err(ReceiveError::Transport(status.message().to_string())),
        Ok(None) => Ok(None),
        Err(_) => Err(ReceiveError::Stalled(timeout.as_millis())),
    }
}

/// Writes `first` and the chunks after it to `path` and syncs the file. Returns the
/// bytes received.
pub async fn receive<S>(
    path: &Path,
    first: pb::SnapshotChunk,
    stream: &mut S,
    chunk_timeout: Duration,
) -> Result<u64, ReceiveError>
where
    S: Stream<Item = Result<pb::SnapshotChunk, tonic::Status>> + Unpin,
{
    let shard_id = first.shard_id;
    let mut file = tokio::fs::File::create(path).await?;
    let mut offset = 0u64;
    let mut chunk = first;
    loop {
        if chunk.shard_id != shard_id || chunk.offset != offset {
            return Err(ReceiveError::OutOfOrder {
                shard_id,
                offset,
                got_shard: chunk.shard_id,
                got_offset: chunk.offset,
            });
        }
        file.write_all(&chunk.data).await?;
        offset += chunk.data.len() as u64;
        if chunk.done {
            break;
        }
        chunk = next_chunk(stream, chunk_timeout)
            .await?
            .ok_or(ReceiveError::Truncated)?;
    }
    file.sync_all().await?;
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(chunk_bytes: usize) -> Outgoing {
        Outgoing {
            shard_id: 3,
            from_node_id: 1,
            to_replica_id: 2,
            chunk_bytes,
            vote: vec![1],
            meta: vec![2],
        }
    }

    async fn sent(data: &[u8], chunk_bytes: usize) -> Vec<pb::SnapshotChunk> {
        chunks(std::io::Cursor::new(data.to_vec()), outgoing(chunk_bytes))
            .collect()
            .await
    }

    fn as_stream(
        chunks: Vec<pb::SnapshotChunk>,
    ) -> impl Stream<Item = Result<pb::SnapshotChunk, tonic::Status>> + Unpin {
        futures::stream::iter(chunks.into_iter().map(Ok))
    }

    async fn receive_all(chunks: Vec<pb::SnapshotChunk>) -> Result<Vec<u8>, ReceiveError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        let mut iter = chunks.into_iter();
        let first = iter.next().expect("a first chunk");
        let mut rest = as_stream(iter.collect());
        receive(&path, first, &mut rest, Duration::from_secs(1)).await?;
        Ok(std::fs::read(&path).unwrap())
    }

    #[tokio::test]
    async fn a_snapshot_goes_through_whole_and_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let chunks = sent(&data, 1024).await;
        assert_eq!(chunks.len(), 10);
        assert_eq!(
            (chunks[0].vote.clone(), chunks[0].meta.clone()),
            (vec![1], vec![2])
        );
        assert!(chunks[1].vote.is_empty() && chunks.last().unwrap().done);
        assert_eq!(receive_all(chunks).await.unwrap(), data);
        // An exact multiple of the chunk size ends with an empty `done` chunk.
        let chunks = sent(&data[..2048], 1024).await;
        assert_eq!(chunks.len(), 3);
        assert_eq!(receive_all(chunks).await.unwrap(), &data[..2048]);
    }

    #[tokio::test]
    async fn truncated_reordered_or_foreign_streams_are_rejected() {
        let data = vec![7u8; 5_000];
        let mut truncated = sent(&data, 1024).await;
        truncated.pop();
        assert!(matches!(
            receive_all(truncated).await,
            Err(ReceiveError::Truncated)
        ));
        let mut reordered = sent(&data, 1024).await;
        reordered.swap(1, 2);
        assert!(matches!(
            receive_all(reordered).await,
            Err(ReceiveError::OutOfOrder {
                offset: 1024,
                got_offset: 2048,
                ..
            })
        ));
        let mut foreign = sent(&data, 1024).await;
        foreign[2].shard_id = 4;
        assert!(matches!(
            receive_all(foreign).await,
            Err(ReceiveError::OutOfOrder { got_shard: 4, .. })
        ));
    }

    #[tokio::test]
    async fn a_stalled_sender_is_dropped_after_the_chunk_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let chunks = sent(&[1u8; 3_000], 1024).await;
        let first = chunks[0].clone();
        let mut never = futures::stream::pending();
        let started = std::time::Instant::now();
        let err = receive(
            &dir.path().join("in"),
            first,
            &mut never,
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ReceiveError::Stalled(100)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
