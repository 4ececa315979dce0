//! Logging set up in one place: structured fields, pretty for terminals or JSON for
//! machines, filtered by `log.level` (a tracing filter expression).

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.level).map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", config.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result =
        if config.format == "json" { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    result.map_err(|e| anyhow::anyhow!("cannot install logger: {e}"))
}
