//! The inventory operations of [`Client`]: mutations (each with a request id kept
//! across retries, through the coalescer or as its own RPC) and reads.

use std::time::Duration;

use stockpile_proto::v1 as pb;

use crate::transport::{Conn, inventory, with_timeout};
use crate::{
    Client, Consistency, Error, Item, Mutation, MutationOutcome, RequestId, Reservation,
    ReservationState, ReservationUpdate, Stock, StockUpdate, Target, coalesce, new_request_id,
    routing,
};
impl Client {
    /// Applies one mutation with `request_id`: through the shard's coalescer when
    /// coalescing is on, else as its own RPC.
    pub async fn execute(
        &self,
        request_id: RequestId,
        mutation: Mutation,
    ) -> Result<MutationOutcome, Error> {
        match mutation {
            Mutation::SetStock { .. }
            | Mutation::AdjustStock { .. }
            | Mutation::Decrement { .. } => Ok(MutationOutcome::Stock(
                self.execute_stock(request_id, mutation).await?,
            )),
            Mutation::Reserve { .. } | Mutation::Confirm { .. } | Mutation::Release { .. } => Ok(
                MutationOutcome::Reservation(self.execute_reservation(request_id, mutation).await?),
            ),
        }
    }

    /// Through the shard's coalescer: a Batch RPC shared with concurrent mutations.
    async fn coalesced(
        &self,
        request_id: RequestId,
        mutation: Mutation,
    ) -> Result<MutationOutcome, Error> {
        let shard_id = self.shard_for(mutation.route_sku())?;
        let op = mutation.to_pb(&request_id);
        let result = coalesce::submit(self, shard_id, request_id, op, self.deadline()).await?;
        MutationOutcome::from_pb(result, request_id).ok_or_else(|| Error::Internal {
            message: "a reply without an outcome".into(),
        })
    }

    /// A stock mutation: coalesced, or as its own typed RPC.
    async fn execute_stock(
        &self,
        request_id: RequestId,
        mutation: Mutation,
    ) -> Result<StockUpdate, Error> {
        if self.inner.cfg.coalesce.enabled {
            return self
                .coalesced(request_id, mutation)
                .await?
                .stock()
                .ok_or_else(|| Error::Internal {
                    message: "a stock command produced no stock record".into(),
                });
        }
        let shard_id = self.shard_for(mutation.route_sku())?;
        let op = mutation.to_pb(&request_id);
        let reply = self
            .call(
                shard_id,
                Target::Leader,
                Some(request_id),
                self.deadline(),
                |ch, t| stock_rpc(ch, t, op.clone()),
            )
            .await?;
        Ok(stock_update(reply, request_id))
    }

    /// A reservation mutation: coalesced, or as its own typed RPC.
    async fn execute_reservation(
        &self,
        request_id: RequestId,
        mutation: Mutation,
    ) -> Result<ReservationUpdate, Error> {
        let update = if self.inner.cfg.coalesce.enabled {
            self.coalesced(request_id, mutation)
                .await?
                .reservation()
                .ok_or_else(|| Error::Internal {
                    message: "a reservation command produced no reservation".into(),
                })?
        } else {
            let shard_id = self.shard_for(mutation.route_sku())?;
            let op = mutation.to_pb(&request_id);
            let reply = self
                .call(
                    shard_id,
                    Target::Leader,
                    Some(request_id),
                    self.deadline(),
                    |ch, t| reservation_rpc(ch, t, op.clone()),
                )
                .await?;
            reservation_update(reply, request_id)
        };
        self.remember_reservation(&update.reservation);
        Ok(update)
    }

    /// Sets `sku`'s on-hand stock (creating the SKU if needed).
    pub async fn set_stock(&self, sku: &str, on_hand: u64) -> Result<StockUpdate, Error> {
        self.set_stock_with_id(new_request_id(), sku, on_hand).await
    }

    /// [`set_stock`](Self::set_stock) with a caller-chosen request id (to retry).
    pub async fn set_stock_with_id(
        &self,
        request_id: RequestId,
        sku: &str,
        on_hand: u64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::SetStock {
                sku: sku.to_string(),
                on_hand,
                expected_version: None,
            },
        )
        .await
    }

    /// Sets `sku`'s on-hand stock only if its record is still at `expected_version`
    /// (0: only if the SKU has no record yet): optimistic concurrency for a
    /// read-modify-write. Otherwise [`Error::VersionMismatch`] with the record's
    /// version, and nothing changes.
    pub async fn set_stock_if_version(
        &self,
        request_id: RequestId,
        sku: &str,
        on_hand: u64,
        expected_version: u64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::SetStock {
                sku: sku.to_string(),
                on_hand,
                expected_version: Some(expected_version),
            },
        )
        .await
    }

    /// [`adjust_stock`](Self::adjust_stock) only if the record is still at
    /// `expected_version` (else [`Error::VersionMismatch`]).
    pub async fn adjust_stock_if_version(
        &self,
        request_id: RequestId,
        sku: &str,
        delta: i64,
        expected_version: u64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::AdjustStock {
                sku: sku.to_string(),
                delta,
                expected_version: Some(expected_version),
            },
        )
        .await
    }

    /// Adds `delta` (may be negative) to `sku`'s on-hand stock; refused with
    /// `InsufficientStock` if it would leave on-hand below reserved.
    pub async fn adjust_stock(&self, sku: &str, delta: i64) -> Result<StockUpdate, Error> {
        self.adjust_stock_with_id(new_request_id(), sku, delta)
            .await
    }

    /// [`adjust_stock`](Self::adjust_stock) with a caller-chosen request id (to retry).
    pub async fn adjust_stock_with_id(
        &self,
        request_id: RequestId,
        sku: &str,
        delta: i64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::AdjustStock {
                sku: sku.to_string(),
                delta,
                expected_version: None,
            },
        )
        .await
    }

    /// Takes `quantity` units of `sku` if that many are available; otherwise
    /// `InsufficientStock` and nothing changes. Never goes below zero.
    pub async fn decrement(&self, sku: &str, quantity: u64) -> Result<StockUpdate, Error> {
        self.decrement_with_id(new_request_id(), sku, quantity)
            .await
    }

    /// [`decrement`](Self::decrement) with a caller-chosen request id (to retry).
    ///
    /// ```no_run
    /// # async fn demo(client: stockpile_client::Client) -> Result<(), stockpile_client::Error> {
    /// use stockpile_client::{new_request_id, Error};
    /// let id = new_request_id();
    /// match client.decrement_with_id(id, "sku-1", 1).await {
    ///     Ok(sold) => println!("{} left", sold.stock.available),
    ///     // Not known whether it happened: the same id later applies it at most once.
    ///     Err(Error::OutcomeUnknown { request_id, .. }) => { client.decrement_with_id(request_id, "sku-1", 1).await?; }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn decrement_with_id(
        &self,
        request_id: RequestId,
        sku: &str,
        quantity: u64,
    ) -> Result<StockUpdate, Error> {
        self.execute_stock(
            request_id,
            Mutation::Decrement {
                sku: sku.to_string(),
                quantity,
            },
        )
        .await
    }

    /// Holds `items` (all in one shard) for `ttl`; the store picks the id. For items
    /// across shards, see [`reserve_cart`](Self::reserve_cart).
    pub async fn reserve(&self, items: &[Item], ttl: Duration) -> Result<ReservationUpdate, Error> {
        self.reserve_with_id(new_request_id(), None, items, ttl)
            .await
    }

    /// [`reserve`](Self::reserve) with a caller-chosen request id and, optionally,
    /// reservation id.
    pub async fn reserve_with_id(
        &self,
        request_id: RequestId,
        reservation_id: Option<&str>,
        items: &[Item],
        ttl: Duration,
    ) -> Result<ReservationUpdate, Error> {
        if items.is_empty() {
            return Err(Error::InvalidArgument {
                field: "items".into(),
                message: "must hold at least one item".into(),
            });
        }
        let m = Mutation::Reserve {
            reservation_id: reservation_id.map(str::to_string),
            items: items.to_vec(),
            ttl,
        };
        self.execute_reservation(request_id, m).await
    }

    fn remember_reservation(&self, r: &Reservation) {
        let Some(item) = r.items.first() else {
            return;
        };
        if r.reservation_id.is_empty() {
            return;
        }
        let mut routing = self.routing();
        if routing.reservation_skus.len() >= routing::RESERVATIONS_REMEMBERED_MAX {
            routing.reservation_skus.clear();
        }
        routing
            .reservation_skus
            .insert(r.reservation_id.clone(), item.sku.clone());
    }

    /// A SKU routing to the reservation's shard: given, remembered, or found by
    /// asking every shard.
    pub(crate) async fn reservation_route(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<String, Error> {
        if let Some(sku) = sku {
            return Ok(sku.to_string());
        }
        let remembered = self.routing().reservation_skus.get(reservation_id).cloned();
        if let Some(sku) = remembered {
            return Ok(sku);
        }
        let shards = self.routing().map.shards.clone();
        for shard in shards {
            match self
                .get_reservation_routed(
                    reservation_id,
                    shard.routing_sku(),
                    Consistency::Linearizable,
                )
                .await
            {
                Ok(r) => {
                    return Ok(r
                        .items
                        .first()
                        .map(|i| i.sku.clone())
                        .unwrap_or_else(|| shard.routing_sku()));
                }
                Err(Error::ReservationNotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::ReservationNotFound {
            reservation_id: reservation_id.to_string(),
        })
    }

    /// Turns an active reservation into a sale. `sku` (any SKU of the reservation)
    /// saves a lookup when the client did not make the reservation itself.
    pub async fn confirm(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        self.confirm_with_id(new_request_id(), reservation_id, sku)
            .await
    }

    /// [`confirm`](Self::confirm) with a caller-chosen request id (to retry).
    pub async fn confirm_with_id(
        &self,
        request_id: RequestId,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        let sku = self.reservation_route(reservation_id, sku).await?;
        self.execute_reservation(
            request_id,
            Mutation::Confirm {
                reservation_id: reservation_id.to_string(),
                sku,
            },
        )
        .await
    }

    /// Gives an active reservation's stock back.
    pub async fn release(
        &self,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        self.release_with_id(new_request_id(), reservation_id, sku)
            .await
    }

    /// [`release`](Self::release) with a caller-chosen request id (to retry).
    pub async fn release_with_id(
        &self,
        request_id: RequestId,
        reservation_id: &str,
        sku: Option<&str>,
    ) -> Result<ReservationUpdate, Error> {
        let sku = self.reservation_route(reservation_id, sku).await?;
        self.execute_reservation(
            request_id,
            Mutation::Release {
                reservation_id: reservation_id.to_string(),
                sku,
            },
        )
        .await
    }
}

/// A stock mutation (SetStock, AdjustStock, Decrement) as its own RPC.
async fn stock_rpc(
    ch: Conn,
    t: Duration,
    op: pb::operation::Op,
) -> Result<pb::StockReply, tonic::Status> {
    use pb::operation::Op;
    let mut c = inventory(ch);
    let reply = match op {
        Op::SetStock(r) => c.set_stock(with_timeout(r, t)).await?,
        Op::AdjustStock(r) => c.adjust_stock(with_timeout(r, t)).await?,
        Op::Decrement(r) => c.decrement(with_timeout(r, t)).await?,
        // Callers pass stock mutations only; nothing is sent.
        _ => return Err(tonic::Status::failed_precondition("not a stock mutation")),
    };
    Ok(reply.into_inner())
}

/// A reservation mutation (Reserve, Confirm, Release) as its own RPC.
async fn reservation_rpc(
    ch: Conn,
    t: Duration,
    op: pb::operation::Op,
) -> Result<pb::ReservationReply, tonic::Status> {
    use pb::operation::Op;
    let mut c = inventory(ch);
    let reply = match op {
        Op::Reserve(r) => c.reserve(with_timeout(r, t)).await?,
        Op::Confirm(r) => c.confirm(with_timeout(r, t)).await?,
        Op::Release(r) => c.release(with_timeout(r, t)).await?,
        // Callers pass reservation mutations only; nothing is sent.
        _ => {
            return Err(tonic::Status::failed_precondition(
                "not a reservation mutation",
            ));
        }
    };
    Ok(reply.into_inner())
}

pub(crate) fn stock_update(r: pb::StockReply, request_id: RequestId) -> StockUpdate {
    StockUpdate {
        stock: r.record.map(Stock::from).unwrap_or_else(empty_stock),
        applied: r.applied.into(),
        request_id,
    }
}

fn empty_stock() -> Stock {
    Stock {
        sku: String::new(),
        on_hand: 0,
        reserved: 0,
        available: 0,
        version: 0,
    }
}

pub(crate) fn reservation_update(
    r: pb::ReservationReply,
    request_id: RequestId,
) -> ReservationUpdate {
    ReservationUpdate {
        reservation: r.reservation.map(Reservation::from).unwrap_or(Reservation {
            reservation_id: String::new(),
            items: Vec::new(),
            state: ReservationState::Unknown,
            created_at_ms: 0,
            expires_at_ms: 0,
            shard_id: 0,
        }),
        stock: r.records.into_iter().map(Stock::from).collect(),
        applied: r.applied.into(),
        request_id,
    }
}
