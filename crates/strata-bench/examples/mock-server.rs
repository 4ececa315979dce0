//! A stand-in Strata API server on 127.0.0.1 (the tests' mock), for trying `strata bench` and
//! for `bench/compare-wrk.sh` until `strata serve` is used instead.
//!
//! `cargo run --release -p strata-bench --example mock-server -- [ADDR]` (default
//! 127.0.0.1:0); prints `listening on http://ADDR` and serves until killed.

#[path = "../tests/bench/mock_server.rs"]
mod mock_server;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let server = mock_server::serve(listener, mock_server::MockOptions::default()).await;
    println!("listening on {}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
