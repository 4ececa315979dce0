//! Test support shared by the adapter crates (feature `testing`): what to do when a test's
//! backend server cannot be used.

use std::io::Write as _;

/// A backend named in `STRATA_REQUIRE_BACKENDS` (CI sets it) must not be skipped: the test
/// fails. Otherwise the skip is written straight to the process's stderr, because the test
/// harness captures `eprintln!` of passing tests and a skipped backend must be visible.
pub fn unusable(what: &str, backend: &str, why: &str) {
    let required =
        std::env::var("STRATA_REQUIRE_BACKENDS").map(|v| v.split(',').any(|b| b.trim() == backend)).unwrap_or(false);
    if required {
        panic!("{backend} is required (STRATA_REQUIRE_BACKENDS) but unusable: {why}");
    }
    let _ = writeln!(std::io::stderr(), "\nSKIPPED {what} on {backend}: {why}");
}
