//! Integration tests of `strata bench` against local servers on 127.0.0.1 (one test binary,
//! modules per topic, to keep link time down). Every run is bounded by its own duration.

mod correctness;
mod mock_server;
mod outputs;
mod scenarios;

use clap::Parser;
use strata_bench::BenchArgs;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Parses a `strata bench` command line (without the program name). The project's tests only
/// ever load this machine's loopback: any other target is a bug in the test.
pub fn bench_args(line: &[&str]) -> BenchArgs {
    if let Some(i) = line.iter().position(|a| *a == "--target") {
        let target = line.get(i + 1).copied().unwrap_or("");
        assert!(target.starts_with("http://127."), "tests target 127.0.0.0/8 only, not {target}");
    }
    Cli::try_parse_from(std::iter::once("strata-bench").chain(line.iter().copied()))
        .expect("valid bench arguments")
        .args
}

/// Runs `strata bench` against a test server with `args`, without scraping `/metrics` and
/// without the progress line: the shape most tests need.
pub async fn run_quiet(target: &str, args: &[&str]) -> strata_bench::Report {
    let mut line = vec!["--target", target];
    line.extend_from_slice(args);
    line.extend(["--no-metrics", "--quiet"]);
    strata_bench::execute(bench_args(&line)).await.expect("run")
}
