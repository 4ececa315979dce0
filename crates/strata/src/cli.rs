//! Command line: `serve`, `migrate`, `config show`, `bench`, `cluster`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::{Application, connect_store, shutdown_signal};
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "User accounts and authentication backend")]
pub struct Cli {
    /// TOML configuration file; STRATA_* environment variables override it.
    #[arg(long, global = true, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API server (embedded SQLite by default).
    Serve {
        /// Address to listen on (overrides `listen` and STRATA_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// What to run (overrides `role` and STRATA_ROLE): `all` (API and worker), `api`,
        /// `worker` (outbox relay and event listeners; health and metrics over HTTP), or
        /// `gateway` (a proxy in front of api instances, `gateway.upstreams`).
        #[arg(long, value_enum)]
        role: Option<crate::config::Role>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Load-test a running Strata (or any HTTP endpoint) and report.
    Bench(Box<strata_bench::BenchArgs>),
    /// Run a local cluster: a gateway, N api and M worker processes over one database.
    Cluster(crate::cluster::ClusterArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective configuration (defaults ← file ← environment), secrets redacted.
    Show,
}

pub fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let text = match path {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("STRATA_")).collect();
    Config::load(text.as_deref(), &env).map_err(anyhow::Error::msg)
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { listen, role } => {
            let mut config = load_config(cli.config.as_ref())?;
            if let Some(addr) = listen {
                config.listen = addr;
            }
            if let Some(role) = role {
                config.role = role;
            }
            crate::telemetry::init(&config.log)?;
            if config.role == crate::config::Role::Gateway {
                crate::app::run_gateway(config, shutdown_signal()).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let app = Application::build(config).await?;
            println!("{}", app.banner());
            app.run_until(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let mut config = load_config(cli.config.as_ref())?;
            crate::telemetry::init(&config.log)?;
            config.database.migrate_on_start = true;
            let store = connect_store(&config).await?;
            println!("database {} ({}) is migrated", strata_store::redact_url(&config.database.url), store.backend());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { action: ConfigAction::Show } => {
            let config = load_config(cli.config.as_ref())?;
            print!("{}", config.redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => strata_bench::run(*args).await,
        Command::Cluster(args) => {
            crate::cluster::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
