//! The event bus conformance suite, run against every adapter (one test binary).
//!
//! Each adapter contributes a factory: `async fn(BusOptions) -> Option<Arc<dyn EventBus>>`
//! that returns `None` (after `strata_core::testing::unusable`) when its broker cannot be
//! reached. Every case uses its own namespace, so runs and cases never see each other's
//! events.

mod conformance;

use std::sync::Arc;

use strata_core::events::BusOptions;
use strata_core::ports::EventBus;

async fn memory(options: BusOptions) -> Option<Arc<dyn EventBus>> {
    Some(Arc::new(strata_events::MemoryBus::new(options)))
}

conformance::suite!(memory, crate::memory);
