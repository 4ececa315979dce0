//! `strata bench` without the rest of Strata: the same arguments and behaviour as the
//! subcommand, for building and running the load generator on its own.
//!
//! `cargo run --release -p strata-bench --example bench-cli -- --target http://127.0.0.1:8080 …`

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "strata-bench")]
struct Cli {
    #[command(flatten)]
    args: strata_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    match strata_bench::run(Cli::parse().args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
