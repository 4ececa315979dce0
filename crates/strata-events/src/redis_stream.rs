//! Scaffold: being written (issue 9). Replaced by the real adapter before it lands.

use std::sync::Arc;

use strata_core::events::{BusError, BusOptions};
use strata_core::ports::EventBus;

pub async fn open(_url: &str, _options: &BusOptions) -> Result<Arc<dyn EventBus>, BusError> {
    Err(BusError::Config("redis_stream adapter not built yet".into()))
}
