//! Carts: a reservation whose items span shards, held as one reservation per shard
//! (named `{cart_id}.{shard_id}`), with compensation when a part fails.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{
    Cart, CartPart, Client, Consistency, Error, Item, Reservation, ReservationUpdate,
    new_request_id, request_id_hex,
};
impl Client {
    /// Holds `items` that may span shards: one reservation per shard, named
    /// `{cart_id}.{shard_id}`, made concurrently. If any shard refuses, every part that
    /// was held is released and the refusal is returned.
    ///
    /// What this guarantees and what it does not (it is **not** atomic):
    /// - each part is atomic within its shard, and nothing is ever oversold;
    /// - on success every item is held until `ttl` passes or the cart is confirmed or
    ///   released;
    /// - while the cart is being reserved, and while a failed cart is being released, a
    ///   reader may see some parts held and others not: stock of one shard may be
    ///   briefly unavailable to others even though the cart as a whole fails;
    /// - if the client dies midway, or a release fails, the held parts return at their
    ///   TTL; a part whose outcome was unknown is released if it exists, and if it is
    ///   applied later still, it expires at its TTL.
    ///
    /// ```no_run
    /// # async fn demo(client: stockpile_client::Client) -> Result<(), stockpile_client::Error> {
    /// use std::time::Duration;
    /// use stockpile_client::Item;
    /// let cart = client.reserve_cart(&[Item::new("apple", 2), Item::new("zucchini", 1)], Duration::from_secs(300)).await?;
    /// for part in client.confirm_cart(&cart).await {
    ///     part?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reserve_cart(&self, items: &[Item], ttl: Duration) -> Result<Cart, Error> {
        let cart_id = format!("cart-{}", &request_id_hex(&new_request_id())[..16]);
        self.reserve_cart_with_id(&cart_id, items, ttl).await
    }

    /// [`reserve_cart`](Self::reserve_cart) with a caller-chosen cart id (1..=40 of
    /// `[A-Za-z0-9._:-]`).
    pub async fn reserve_cart_with_id(
        &self,
        cart_id: &str,
        items: &[Item],
        ttl: Duration,
    ) -> Result<Cart, Error> {
        if cart_id.is_empty()
            || cart_id.len() > 40
            || !cart_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
        {
            return Err(Error::InvalidArgument {
                field: "cart_id".into(),
                message: "must be 1..=40 of A-Z a-z 0-9 . _ : -".into(),
            });
        }
        if items.is_empty() {
            return Err(Error::InvalidArgument {
                field: "items".into(),
                message: "must hold at least one item".into(),
            });
        }
        let mut by_shard: BTreeMap<u64, Vec<Item>> = BTreeMap::new();
        for item in items {
            by_shard
                .entry(self.shard_for(&item.sku)?)
                .or_default()
                .push(item.clone());
        }
        let attempts = by_shard.into_iter().map(|(shard_id, items)| async move {
            let reservation_id = format!("{cart_id}.{shard_id}");
            let result = self
                .reserve_with_id(new_request_id(), Some(&reservation_id), &items, ttl)
                .await;
            (
                CartPart {
                    shard_id,
                    sku: items[0].sku.clone(),
                    reservation_id,
                    items,
                },
                result,
            )
        });
        let results = futures::future::join_all(attempts).await;
        let failure = results
            .iter()
            .find_map(|(_, r)| r.as_ref().err().filter(|e| e.is_definite()).cloned())
            .or_else(|| results.iter().find_map(|(_, r)| r.as_ref().err().cloned()));
        match failure {
            None => {
                let expires_at_ms = results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .map(|u| u.reservation.expires_at_ms)
                    .min()
                    .unwrap_or(0);
                Ok(Cart {
                    cart_id: cart_id.to_string(),
                    parts: results.into_iter().map(|(p, _)| p).collect(),
                    expires_at_ms,
                })
            }
            Some(e) => {
                // Give back what was (or may have been) held.
                for (part, r) in &results {
                    let held_or_unknown = match r {
                        Ok(_) => true,
                        Err(e) => !e.is_definite(),
                    };
                    if held_or_unknown {
                        match self.release(&part.reservation_id, Some(&part.sku)).await {
                            Ok(_)
                            | Err(Error::ReservationNotFound { .. })
                            | Err(Error::ReservationExpired { .. })
                            | Err(Error::ReservationNotActive { .. }) => {}
                            Err(re) => {
                                tracing::warn!(reservation = %part.reservation_id, error = %re, "cart part not released; it expires at its TTL")
                            }
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Confirms every part of a cart; one result per part. Parts are independent: one
    /// may fail (say, expired) while others succeed, and the caller decides.
    pub async fn confirm_cart(&self, cart: &Cart) -> Vec<Result<ReservationUpdate, Error>> {
        futures::future::join_all(
            cart.parts
                .iter()
                .map(|p| self.confirm(&p.reservation_id, Some(&p.sku))),
        )
        .await
    }

    /// Releases every part of a cart; one result per part.
    pub async fn release_cart(&self, cart: &Cart) -> Vec<Result<ReservationUpdate, Error>> {
        futures::future::join_all(
            cart.parts
                .iter()
                .map(|p| self.release(&p.reservation_id, Some(&p.sku))),
        )
        .await
    }

    /// Finds a cart's parts by asking every shard for `{cart_id}.{shard_id}`.
    pub async fn find_cart(&self, cart_id: &str) -> Result<(Cart, Vec<Reservation>), Error> {
        let shards = self.routing().map.shards.clone();
        let mut parts = Vec::new();
        let mut found = Vec::new();
        for shard in shards {
            let id = format!("{cart_id}.{}", shard.shard_id);
            match self
                .get_reservation_routed(&id, shard.routing_sku(), Consistency::Linearizable)
                .await
            {
                Ok(r) => {
                    parts.push(CartPart {
                        shard_id: shard.shard_id,
                        reservation_id: id,
                        sku: r
                            .items
                            .first()
                            .map(|i| i.sku.clone())
                            .unwrap_or_else(|| shard.routing_sku()),
                        items: r.items.clone(),
                    });
                    found.push(r);
                }
                Err(Error::ReservationNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if parts.is_empty() {
            return Err(Error::ReservationNotFound {
                reservation_id: cart_id.to_string(),
            });
        }
        let expires_at_ms = found.iter().map(|r| r.expires_at_ms).min().unwrap_or(0);
        Ok((
            Cart {
                cart_id: cart_id.to_string(),
                parts,
                expires_at_ms,
            },
            found,
        ))
    }
}
