//! The `strata` binary's library half: CLI, configuration and the wiring of the layers
//! into a running server. `main.rs` stays thin so tests can build the same application.

pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod telemetry;
