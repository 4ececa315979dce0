//! A stand-in Strata API server on 127.0.0.1 (the tests' mock), for trying `strata bench` and
//! for `bench/compare-wrk.sh` until `strata serve` is used instead.
//!
//! `cargo run --release -p strata-bench --example mock-server -- [ADDR [STALL_EVERY STALL_MS]]`
//! (default 127.0.0.1:0, no stalls); prints `listening on http://ADDR` and serves until killed.
//! With STALL_EVERY > 0 the whole server freezes for STALL_MS on every STALL_EVERY-th request,
//! to see the open and closed models disagree.

#[path = "../tests/bench/mock_server.rs"]
mod mock_server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().cloned().unwrap_or_else(|| "127.0.0.1:0".to_string());
    let number = |i: usize| -> anyhow::Result<u64> {
        args.get(i).map_or(Ok(0), |v| v.parse().map_err(|_| anyhow::anyhow!("`{v}` is not a number")))
    };
    let options = mock_server::MockOptions {
        stall_every: number(1)?,
        stall_for: std::time::Duration::from_millis(number(2)?),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let server = mock_server::serve(listener, options).await;
    println!("listening on {}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
