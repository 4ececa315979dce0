//! Sharding's vocabulary: the shard map (which physical database holds each logical
//! shard, and the state of a move), the global email claims, and the catalog port that
//! stores both.
//!
//! Users are placed in a fixed number of logical shards ([`crate::domain::logical_shard`]
//! of their id); the map assigns each logical shard to a physical database by name (its
//! URL without the password). Moving a logical shard walks its placement through
//! [`MoveStep`]s, each a compare-and-set on the catalog row, so that a move killed at any
//! point is resumed from the step it reached.

use async_trait::async_trait;

use crate::domain::{Email, Timestamp, UserId};
use crate::error::RepoError;

/// Upper bound on logical shards: a session's token hash names its shard in one byte.
pub const MAX_LOGICAL_SHARDS: u16 = 256;

/// Where a move of one logical shard stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveStep {
    /// Writes to the logical shard are refused (503); reads still go to the source
    /// (`shard`); the mover copies it to `other`, the target.
    Copying,
    /// The copy is complete and reads go to the target (`shard` now); writes are still
    /// refused, until every instance has stopped reading the source (`other`).
    Switching,
    /// Reads and writes go to the target (`shard`); the mover deletes the old copy from
    /// `other`.
    Cleaning,
}

impl MoveStep {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveStep::Copying => "copying",
            MoveStep::Switching => "switching",
            MoveStep::Cleaning => "cleaning",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "copying" => Some(MoveStep::Copying),
            "switching" => Some(MoveStep::Switching),
            "cleaning" => Some(MoveStep::Cleaning),
            _ => None,
        }
    }
}

/// One logical shard's row of the shard map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub logical: u16,
    /// The physical database reads go to.
    pub shard: String,
    /// During a move: the target while copying, the source after the switch.
    pub other: Option<String>,
    pub step: Option<MoveStep>,
    /// When the move reached its current step.
    pub since: Option<Timestamp>,
    /// Bumped by every change: the compare in compare-and-set.
    pub version: i64,
}

impl Placement {
    pub fn new(logical: u16, shard: impl Into<String>) -> Self {
        Placement { logical, shard: shard.into(), other: None, step: None, since: None, version: 1 }
    }

    /// Writes are refused while the copy is made and until the switch is seen everywhere.
    pub fn writable(&self) -> bool {
        matches!(self.step, None | Some(MoveStep::Cleaning))
    }

    /// The same placement one step on (a new version).
    pub fn with_step(&self, shard: &str, other: Option<&str>, step: Option<MoveStep>, at: Timestamp) -> Self {
        Placement {
            logical: self.logical,
            shard: shard.to_owned(),
            other: other.map(str::to_owned),
            step,
            since: step.map(|_| at),
            version: self.version + 1,
        }
    }
}

/// A claim on an email address, made in the catalog before the user row is written.
/// `Pending` claims are being written or changed; the reconciler settles those older than
/// a grace period against the user row (kept if the user has that email, released if not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimState {
    Pending,
    Active,
}

impl ClaimState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Active => "active",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailClaim {
    pub email: Email,
    pub user_id: UserId,
    pub state: ClaimState,
    /// When the claim last became pending.
    pub at: Timestamp,
}

/// The catalog of a sharded deployment: the shard map and the global email claims. Every
/// store adapter implements it over two tables of its schema, so any engine can be the
/// catalog.
#[async_trait]
pub trait ShardCatalog: Send + Sync {
    /// The map in logical order; empty before the first start.
    async fn shard_map(&self) -> Result<Vec<Placement>, RepoError>;

    /// Stores `placements` if the map is empty (first start, racing instances agree on
    /// the first writer's map), then returns the map as stored.
    async fn create_shard_map(&self, placements: &[Placement]) -> Result<Vec<Placement>, RepoError>;

    /// Replaces the placement of `new.logical` if its version is still `expected`.
    async fn update_placement(&self, expected: i64, new: &Placement) -> Result<bool, RepoError>;

    /// Claims `email` for `user` as `Pending` (also when the user holds it already).
    /// `EmailTaken` if another user holds it.
    async fn claim_email(&self, email: &Email, user: UserId, at: Timestamp) -> Result<(), RepoError>;

    /// Marks `user`'s claim on `email` active (a no-op if it holds none).
    async fn confirm_email(&self, email: &Email, user: UserId) -> Result<(), RepoError>;

    /// Drops `user`'s claim on `email` (a no-op if it holds none).
    async fn release_email(&self, email: &Email, user: UserId) -> Result<(), RepoError>;

    async fn email_claim(&self, email: &Email) -> Result<Option<EmailClaim>, RepoError>;

    /// Pending claims made before `before`, oldest first, at most `limit`.
    async fn pending_claims(&self, before: Timestamp, limit: u32) -> Result<Vec<EmailClaim>, RepoError>;
}

/// Implements [`ShardCatalog`] for a composite store by forwarding every call to one
/// inner store: `forward_shard_catalog!(MyStore, |self| self.inner)`. The composite
/// stores (replicated, sharded, test doubles) own no catalog of their own.
#[macro_export]
macro_rules! forward_shard_catalog {
    ($store:ty, |$this:ident| $inner:expr) => {
        #[async_trait::async_trait]
        impl $crate::shards::ShardCatalog for $store {
            async fn shard_map(&$this) -> Result<Vec<$crate::shards::Placement>, $crate::error::RepoError> {
                $inner.shard_map().await
            }
            async fn create_shard_map(
                &$this,
                placements: &[$crate::shards::Placement],
            ) -> Result<Vec<$crate::shards::Placement>, $crate::error::RepoError> {
                $inner.create_shard_map(placements).await
            }
            async fn update_placement(
                &$this,
                expected: i64,
                new: &$crate::shards::Placement,
            ) -> Result<bool, $crate::error::RepoError> {
                $inner.update_placement(expected, new).await
            }
            async fn claim_email(
                &$this,
                email: &$crate::domain::Email,
                user: $crate::domain::UserId,
                at: $crate::domain::Timestamp,
            ) -> Result<(), $crate::error::RepoError> {
                $inner.claim_email(email, user, at).await
            }
            async fn confirm_email(
                &$this,
                email: &$crate::domain::Email,
                user: $crate::domain::UserId,
            ) -> Result<(), $crate::error::RepoError> {
                $inner.confirm_email(email, user).await
            }
            async fn release_email(
                &$this,
                email: &$crate::domain::Email,
                user: $crate::domain::UserId,
            ) -> Result<(), $crate::error::RepoError> {
                $inner.release_email(email, user).await
            }
            async fn email_claim(
                &$this,
                email: &$crate::domain::Email,
            ) -> Result<Option<$crate::shards::EmailClaim>, $crate::error::RepoError> {
                $inner.email_claim(email).await
            }
            async fn pending_claims(
                &$this,
                before: $crate::domain::Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::shards::EmailClaim>, $crate::error::RepoError> {
                $inner.pending_claims(before, limit).await
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_and_gate_writes() {
        for step in [MoveStep::Copying, MoveStep::Switching, MoveStep::Cleaning] {
            assert_eq!(MoveStep::parse(step.as_str()), Some(step));
        }
        assert_eq!(MoveStep::parse("done"), None);
        let home = Placement::new(7, "a");
        assert!(home.writable());
        let copying = home.with_step("a", Some("b"), Some(MoveStep::Copying), Timestamp(5));
        assert!(!copying.writable());
        assert_eq!((copying.version, copying.since), (2, Some(Timestamp(5))));
        assert!(!copying.with_step("b", Some("a"), Some(MoveStep::Switching), Timestamp(6)).writable());
        assert!(copying.with_step("b", Some("a"), Some(MoveStep::Cleaning), Timestamp(6)).writable());
    }
}
