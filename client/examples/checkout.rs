//! A checkout against the local 3-node cluster: stock a SKU, reserve two units
//! while the customer pays, confirm the sale, and show what a retry of the confirm
//! does (nothing: it returns the stored outcome).
//!
//! ```sh
//! scripts/cluster.sh up
//! cargo run --release -p stockpile-client --example checkout
//! ```

use std::time::Duration;

use stockpile_client::{Client, Consistency, Error, Item, LOCAL_CLUSTER, new_request_id};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = Client::builder()
        .seeds(LOCAL_CLUSTER)
        .region("local")
        .request_timeout(Duration::from_secs(10))
        .build()
        .await?;

    client.set_stock("sku-checkout-demo", 5).await?;
    println!("stocked 5 units of sku-checkout-demo");

    // Hold 2 units for 30 s while the customer pays.
    let held = client
        .reserve(
            &[Item::new("sku-checkout-demo", 2)],
            Duration::from_secs(30),
        )
        .await?;
    let id = held.reservation.reservation_id.clone();
    println!(
        "reserved 2 units: reservation {id}, expires at {} ms",
        held.reservation.expires_at_ms
    );
    let s = client
        .get_one("sku-checkout-demo", Consistency::Linearizable)
        .await?
        .expect("stocked above");
    println!(
        "on hand {}, reserved {}, available {}",
        s.on_hand, s.reserved, s.available
    );

    // Payment succeeded: confirm. Keep the request id so a retry is safe.
    let confirm_id = new_request_id();
    let sold = client
        .confirm_with_id(confirm_id, &id, Some("sku-checkout-demo"))
        .await?;
    println!(
        "confirmed: reservation is {:?}; on hand now {}",
        sold.reservation.state, sold.stock[0].on_hand
    );

    // A retry with the same request id (say, the reply was lost) changes nothing.
    let again = client
        .confirm_with_id(confirm_id, &id, Some("sku-checkout-demo"))
        .await?;
    println!(
        "retried the confirm: replayed = {}, on hand still {}",
        again.applied.replayed, again.stock[0].on_hand
    );

    // Holding more than is available is refused, and nothing changes.
    match client
        .reserve(
            &[Item::new("sku-checkout-demo", 10)],
            Duration::from_secs(30),
        )
        .await
    {
        Err(Error::InsufficientStock { available, .. }) => {
            println!("a 10-unit hold was refused: only {available} available")
        }
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
