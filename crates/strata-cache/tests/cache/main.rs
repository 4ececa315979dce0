//! The cache port's conformance suite, run against every adapter (memory, Redis,
//! Memcached, and both tiered shapes), plus fault tests with private server processes.
//! Redis and Memcached are skipped visibly when unreachable, unless
//! `STRATA_REQUIRE_BACKENDS` names them (CI).

#![allow(clippy::unwrap_used)]

mod conformance;
mod deployments;
mod faults;
mod positions;
