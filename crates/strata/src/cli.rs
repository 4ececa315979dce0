//! Command line: `serve`, `migrate`, `backup`, `restore`, `import`, `config show`, `bench`, `cluster`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::{Application, connect_store, shutdown_signal};
use crate::config::Config;
use strata_backup::import::{self, ImportOptions, Importer, OnError, SourceKind};
use strata_core::backup::OnExisting;
use strata_core::error::RepoError;
use strata_core::password::HashParams;
use strata_core::ports::{Clock as _, Store as _, SystemClock};
use strata_store::foreign::{ForeignDatabase, ForeignUsers, read_rows};

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
    /// Take an online, consistent backup of the configured database into a new directory
    /// (a manifest and a gzipped JSON Lines file per table; see docs/backup-format.md).
    Backup {
        /// The directory to create; it must not exist yet.
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup, taken on any backend, into the configured database (migrated
    /// first). Everything is verified before anything is written, and the write is one
    /// transaction: a failed or killed restore leaves the database as it was.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// Replace whatever the database holds (in the same transaction) instead of
        /// refusing a database that has rows.
        #[arg(long)]
        replace: bool,
        /// Only verify the backup against its manifest; connect to no database.
        #[arg(long)]
        verify_only: bool,
    },
    /// Import users from another system (or a Strata backup) into the configured database
    /// (migrated first), keeping their password hashes: they log in with their old
    /// passwords, upgraded to argon2id at first login. Re-running imports nothing twice.
    Import {
        /// What SOURCE is.
        #[arg(long = "from", value_enum)]
        kind: ImportKind,
        /// A database URL (fastapi-users, django; SQLAlchemy's `dialect+driver://` forms
        /// too), a Keycloak realm export file or directory, or a backup directory.
        source: String,
        /// What a rejected user (invalid or duplicate email, invalid name) does.
        #[arg(long, value_enum, default_value = "skip")]
        on_error: ImportOnError,
        /// Check everything against the database, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Inspect and move the logical shards of a sharded deployment (`database.shards`).
    Shards {
        #[command(subcommand)]
        action: ShardsAction,
    },
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Load-test a running Strata (or any HTTP endpoint) and report.
    Bench(Box<strata_bench::BenchArgs>),
    /// Name the bottleneck of a saved `strata bench --analyze --json` report (again, with
    /// this version's rules).
    Analyze(strata_bench::AnalyzeArgs),
    /// Run a local cluster: a gateway, N api and M worker processes over one database.
    Cluster(crate::cluster::ClusterArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportKind {
    FastapiUsers,
    Django,
    Keycloak,
    StrataJsonl,
}

impl From<ImportKind> for SourceKind {
    fn from(kind: ImportKind) -> Self {
        match kind {
            ImportKind::FastapiUsers => SourceKind::FastapiUsers,
            ImportKind::Django => SourceKind::Django,
            ImportKind::Keycloak => SourceKind::Keycloak,
            ImportKind::StrataJsonl => SourceKind::StrataJsonl,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportOnError {
    /// Report the user and carry on.
    Skip,
    /// Stop at the first; what was imported before stays, and a re-run skips it.
    Stop,
}

#[derive(Debug, Subcommand)]
pub enum ShardsAction {
    /// The shard map: each database's logical shards and users, and moves in flight.
    Status,
    /// Move one logical shard to another configured database while the API keeps serving:
    /// writes to it pause (503 + Retry-After) while it is copied and switched. Run again
    /// to resume a move that was interrupted at any step.
    Move {
        /// The logical shard (see `strata shards status`).
        logical: u16,
        /// The target database: one of `database.shards` (on every instance too).
        #[arg(long)]
        to: String,
    },
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
        Command::Backup { out } => {
            let config = load_config(cli.config.as_ref())?;
            crate::telemetry::init(&config.log)?;
            let store = connect_store(&config).await?;
            let manifest = strata_backup::backup(&*store, &out, &strata_backup::Progress::stderr()).await?;
            println!(
                "backup of {} ({}) written to {}: {} rows in {} tables, schema version {}",
                strata_store::redact_url(&config.database.url),
                store.backend(),
                out.display(),
                manifest.tables.iter().map(|t| t.rows).sum::<u64>(),
                manifest.tables.len(),
                manifest.schema_version
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { from, replace, verify_only } => {
            let progress = strata_backup::Progress::stderr();
            if verify_only {
                let manifest = strata_backup::verify(&from).await?;
                let rows: u64 = manifest.tables.iter().map(|t| t.rows).sum();
                println!(
                    "{}: {rows} rows verified against the manifest ({} backup of {})",
                    from.display(),
                    manifest.source_backend,
                    manifest.created_at
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut config = load_config(cli.config.as_ref())?;
            crate::telemetry::init(&config.log)?;
            config.database.migrate_on_start = true;
            let store = connect_store(&config).await?;
            let existing = if replace { OnExisting::Replace } else { OnExisting::Refuse };
            let manifest = match strata_backup::restore(&*store, &from, existing, &progress).await {
                Err(strata_backup::BackupError::Store(RepoError::NotEmpty(tables))) => anyhow::bail!(
                    "{} is not empty ({tables} have rows): nothing was written; restore into an empty database, or pass --replace to replace its contents",
                    strata_store::redact_url(&config.database.url)
                ),
                outcome => outcome?,
            };
            println!(
                "restored {} rows from {} ({} backup of {}) into {} ({})",
                manifest.tables.iter().map(|t| t.rows).sum::<u64>(),
                from.display(),
                manifest.source_backend,
                manifest.created_at,
                strata_store::redact_url(&config.database.url),
                store.backend()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { kind, source, on_error, dry_run } => {
            let mut config = load_config(cli.config.as_ref())?;
            crate::telemetry::init(&config.log)?;
            config.database.migrate_on_start = true;
            let store = connect_store(&config).await?;
            let options = ImportOptions {
                on_error: match on_error {
                    ImportOnError::Skip => OnError::Skip,
                    ImportOnError::Stop => OnError::Stop,
                },
                dry_run,
                hash_params: HashParams {
                    memory_kib: config.password.memory_kib,
                    iterations: config.password.iterations,
                    parallelism: config.password.parallelism,
                },
            };
            let mut importer = Importer::new(&*store, options, SystemClock.now());
            let outcome = import_users(&mut importer, kind.into(), &source).await;
            print!("{}", importer.report().summary(dry_run));
            outcome?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { action: ConfigAction::Show } => {
            let config = load_config(cli.config.as_ref())?;
            print!("{}", config.redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => strata_bench::run(*args).await,
        Command::Analyze(args) => strata_bench::analyze_saved(&args),
        Command::Shards { action } => {
            let config = load_config(cli.config.as_ref())?;
            crate::telemetry::init(&config.log)?;
            if config.database.shards.is_empty() {
                anyhow::bail!("database.shards (STRATA_DATABASE_SHARDS) is empty: this deployment is not sharded");
            }
            let store = crate::app::connect_sharded(&config, None).await?;
            match action {
                ShardsAction::Status => print!("{}", shard_status_text(&store.status().await?)),
                ShardsAction::Move { logical, to } => {
                    let target = strata_store::redact_url(&to);
                    let count = store.logical_shards().unwrap_or(0);
                    if logical >= count {
                        anyhow::bail!("there is no logical shard {logical}: this deployment has 0..{count}");
                    }
                    if !config.database.shard_urls().iter().any(|u| strata_store::redact_url(u) == target) {
                        anyhow::bail!(
                            "--to {target} is not in database.shards: add it there on every instance (and here) first"
                        );
                    }
                    store
                        .move_shard(logical, &target, &SystemClock, &|step| eprintln!("{step}"))
                        .await
                        .with_context(|| format!("moving logical shard {logical} to {target}"))?;
                    println!("logical shard {logical} is on {target}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(args) => {
            crate::cluster::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Feeds every user of `source` to the importer: database rows as the reader streams them
/// in batches, files whole.
async fn import_users(importer: &mut Importer<'_>, kind: SourceKind, source: &str) -> anyhow::Result<()> {
    let now = SystemClock.now();
    match kind {
        SourceKind::FastapiUsers | SourceKind::Django => {
            let database = ForeignDatabase::parse(source)?;
            let (users, map): (_, fn(&_, _) -> _) = if kind == SourceKind::Django {
                (ForeignUsers::Django, import::django_row)
            } else {
                (ForeignUsers::FastapiUsers, import::fastapi_users_row)
            };
            let sql = database.users_query(users);
            let (tx, mut rx) = tokio::sync::mpsc::channel(2);
            let reader = tokio::spawn(async move { read_rows(&database, &sql, tx).await });
            while let Some(batch) = rx.recv().await {
                for row in &batch {
                    importer.offer(map(row, now)).await?;
                }
            }
            reader.await.context("source reader")??;
        }
        SourceKind::Keycloak => {
            for file in import::keycloak_files(std::path::Path::new(source))? {
                for user in import::keycloak_users(&file, now)? {
                    importer.offer(user).await?;
                }
            }
        }
        SourceKind::StrataJsonl => {
            for user in import::strata_users(std::path::Path::new(source)).await? {
                importer.offer(user).await?;
            }
        }
    }
    Ok(())
}

fn shard_status_text(status: &strata_store::sharded::ShardStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{} logical shards", status.map.len());
    let width = status.databases.iter().map(|d| d.name.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "{:width$}  {:>7}  {:>10}", "database", "logical", "users");
    for db in &status.databases {
        let _ = writeln!(out, "{:width$}  {:>7}  {:>10}", db.name, db.logical.len(), db.users);
    }
    let moves: Vec<_> = status.map.iter().filter(|p| p.step.is_some()).collect();
    if moves.is_empty() {
        let _ = writeln!(out, "no moves in flight");
    }
    for p in moves {
        let step = p.step.map(|s| s.as_str()).unwrap_or("");
        let since = p.since.map(strata_core::domain::rfc3339).unwrap_or_default();
        let (from, to) = match p.step {
            Some(strata_core::shards::MoveStep::Copying) => (p.shard.as_str(), p.other.as_deref().unwrap_or("?")),
            _ => (p.other.as_deref().unwrap_or("?"), p.shard.as_str()),
        };
        let _ = writeln!(out, "logical shard {}: moving from {from} to {to}, {step} since {since}", p.logical);
    }
    out
}
