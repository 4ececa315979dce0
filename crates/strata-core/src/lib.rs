//! Strata's domain and application layer.
//!
//! Domain types that parse once ([`domain`]), the errors services answer with ([`error`]),
//! the ports adapters implement ([`ports`]) and the services built on them ([`service`]),
//! with their caching policy ([`auth_cache`], over the byte-level `Cache` port) and a
//! single-flight utility ([`singleflight`]).
//!
//! Architecture invariant: this crate knows nothing of HTTP, SQL, caches or brokers. It
//! must not depend on axum, a database driver or a metrics library.

pub mod auth_cache;
pub mod backup;
pub mod cidr;
pub mod domain;
pub mod error;
pub mod events;
pub mod fault;
pub mod groups;
pub mod lifecycle;
pub mod mail;
pub mod password;
pub mod ports;
pub mod provisioning;
pub mod relay;
pub mod secret;
pub mod service;
pub mod shards;
pub mod singleflight;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
pub mod timing;
pub mod totp;
pub mod trace;
pub mod webhook_admin;
pub mod webhooks;
pub mod worker;
