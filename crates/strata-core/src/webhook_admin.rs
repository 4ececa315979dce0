//! The webhook admin service: endpoints, secret rotation, the delivery log and replays.
//! Admins only; the HTTP layer parses and renders.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::Timestamp;
use crate::error::{AppError, ValidationError};
use crate::ports::{Clock, Store};
use crate::service::Actor;
use crate::webhooks::{
    DeliveryQuery, DeliveryStatus, NetworkPolicy, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookSecret,
    WebhookUrl, parse_event_types,
};

pub const DESCRIPTION_MAX_CHARS: usize = 500;
pub const RATE_LIMIT_MAX: u32 = 10_000;
pub const RATE_LIMIT_DEFAULT: u32 = 50;

/// A new endpoint as the admin asked for it (parsed by [`WebhookAdmin::create`]).
#[derive(Clone, Debug, Default)]
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub rate_limit: Option<u32>,
}

/// A change to an endpoint; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub rate_limit: Option<u32>,
    pub enabled: Option<bool>,
}

pub struct DeliveryPage {
    pub items: Vec<WebhookDelivery>,
    pub next_after: Option<uuid::Uuid>,
}

pub struct WebhookAdmin {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: NetworkPolicy,
    rotation_overlap: Duration,
    list_max_limit: u32,
}

impl WebhookAdmin {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: NetworkPolicy,
        rotation_overlap: Duration,
        list_max_limit: u32,
    ) -> Self {
        WebhookAdmin { store, clock, policy, rotation_overlap, list_max_limit }
    }

    fn admin(actor: &Actor) -> Result<(), AppError> {
        if actor.is_admin() { Ok(()) } else { Err(AppError::Forbidden("managing webhooks requires an admin")) }
    }

    /// Parses the URL and refuses an IP literal the policy refuses (a name is checked at
    /// every delivery, since what it resolves to can change).
    fn url(&self, raw: &str) -> Result<WebhookUrl, AppError> {
        let url = WebhookUrl::parse(raw)?;
        if let Ok(ip) = url.host().parse::<std::net::IpAddr>() {
            self.policy.check(ip).map_err(|why| ValidationError::new("url", "forbidden_address", why))?;
        }
        Ok(url)
    }

    fn description(d: Option<String>) -> Result<String, AppError> {
        let d = d.unwrap_or_default();
        if d.chars().count() > DESCRIPTION_MAX_CHARS {
            return Err(ValidationError::new(
                "description",
                "too_long",
                format!("description is longer than {DESCRIPTION_MAX_CHARS} characters"),
            )
            .into());
        }
        if d.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ValidationError::new("description", "invalid", "description has control characters").into());
        }
        Ok(d)
    }

    fn rate_limit(r: u32) -> Result<u32, AppError> {
        if (1..=RATE_LIMIT_MAX).contains(&r) {
            Ok(r)
        } else {
            Err(ValidationError::new(
                "rate_limit",
                "out_of_range",
                format!("rate_limit is deliveries per second, 1 to {RATE_LIMIT_MAX}"),
            )
            .into())
        }
    }

    /// Creates an endpoint; its secret (`secrets[0].key`) is shown to the caller once.
    pub async fn create(&self, actor: &Actor, new: NewEndpoint) -> Result<WebhookEndpoint, AppError> {
        Self::admin(actor)?;
        let now = self.clock.now();
        let endpoint = WebhookEndpoint {
            id: uuid::Uuid::now_v7(),
            url: self.url(&new.url)?,
            events: parse_event_types(&new.events)?,
            description: Self::description(new.description)?,
            enabled: true,
            disabled_reason: None,
            secrets: vec![WebhookSecret::generate()],
            rate_limit: Self::rate_limit(new.rate_limit.unwrap_or(RATE_LIMIT_DEFAULT))?,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        self.store.create_webhook_endpoint(&endpoint).await?;
        Ok(endpoint)
    }

    pub async fn get(&self, actor: &Actor, id: uuid::Uuid) -> Result<WebhookEndpoint, AppError> {
        Self::admin(actor)?;
        self.store.webhook_endpoint(id).await?.ok_or(AppError::NotFound("webhook endpoint"))
    }

    pub async fn list(&self, actor: &Actor) -> Result<Vec<WebhookEndpoint>, AppError> {
        Self::admin(actor)?;
        Ok(self.store.webhook_endpoints().await?)
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: uuid::Uuid,
        patch: EndpointPatch,
    ) -> Result<WebhookEndpoint, AppError> {
        let mut e = self.get(actor, id).await?;
        if let Some(url) = patch.url {
            e.url = self.url(&url)?;
        }
        if let Some(events) = patch.events {
            e.events = parse_event_types(&events)?;
        }
        if let Some(d) = patch.description {
            e.description = Self::description(Some(d))?;
        }
        if let Some(r) = patch.rate_limit {
            e.rate_limit = Self::rate_limit(r)?;
        }
        match patch.enabled {
            Some(true) => {
                e.enabled = true;
                e.disabled_reason = None;
                e.failing_since = None;
            }
            Some(false) if e.enabled => {
                e.enabled = false;
                e.disabled_reason = Some("disabled by an admin".into());
            }
            _ => {}
        }
        e.updated_at = self.clock.now();
        self.store.update_webhook_endpoint(&e, None).await?;
        Ok(e)
    }

    pub async fn delete(&self, actor: &Actor, id: uuid::Uuid) -> Result<(), AppError> {
        Self::admin(actor)?;
        if self.store.delete_webhook_endpoint(id).await? { Ok(()) } else { Err(AppError::NotFound("webhook endpoint")) }
    }

    /// A new secret signs from now on; the previous one keeps signing (deliveries carry
    /// both signatures) for the rotation overlap, so receivers can switch without a gap.
    /// Returns the endpoint with the new secret first.
    pub async fn rotate_secret(&self, actor: &Actor, id: uuid::Uuid) -> Result<WebhookEndpoint, AppError> {
        let mut e = self.get(actor, id).await?;
        let now = self.clock.now();
        let until = now.plus(self.rotation_overlap);
        let mut secrets = vec![WebhookSecret::generate()];
        secrets.extend(e.secrets.into_iter().filter(|s| s.expires_at.is_none_or(|t| t > now)).map(|mut s| {
            s.expires_at = Some(s.expires_at.map_or(until, |t| t.min(until)));
            s
        }));
        e.secrets = secrets;
        e.updated_at = now;
        self.store.update_webhook_endpoint(&e, None).await?;
        Ok(e)
    }

    pub async fn deliveries(&self, actor: &Actor, mut query: DeliveryQuery) -> Result<DeliveryPage, AppError> {
        self.get(actor, query.endpoint_id).await?;
        let limit = if query.limit == 0 { 50 } else { query.limit.min(self.list_max_limit) };
        query.limit = limit + 1;
        let mut items = self.store.webhook_deliveries(&query).await?;
        let next_after = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|d| d.id)
        } else {
            None
        };
        Ok(DeliveryPage { items, next_after })
    }

    pub async fn delivery(
        &self,
        actor: &Actor,
        endpoint_id: uuid::Uuid,
        id: uuid::Uuid,
    ) -> Result<(WebhookDelivery, Vec<WebhookAttempt>), AppError> {
        Self::admin(actor)?;
        let d = self.store.webhook_delivery(endpoint_id, id).await?.ok_or(AppError::NotFound("webhook delivery"))?;
        let attempts = self.store.webhook_attempts(id).await?;
        Ok((d, attempts))
    }

    /// Sends one delivery again (any that is not pending: dead-lettered or delivered).
    pub async fn replay(&self, actor: &Actor, endpoint_id: uuid::Uuid, id: uuid::Uuid) -> Result<(), AppError> {
        let (d, _) = self.delivery(actor, endpoint_id, id).await?;
        if d.status == DeliveryStatus::Pending {
            return Err(ValidationError::new("status", "pending", "the delivery is still pending").into());
        }
        self.store.replay_delivery(endpoint_id, id, self.clock.now()).await?;
        Ok(())
    }

    /// Sends every dead-lettered delivery of the endpoint created at or after `since` again.
    pub async fn replay_failed(
        &self,
        actor: &Actor,
        endpoint_id: uuid::Uuid,
        since: Timestamp,
    ) -> Result<u64, AppError> {
        let e = self.get(actor, endpoint_id).await?;
        if !e.enabled {
            return Err(
                ValidationError::new("enabled", "disabled", "enable the endpoint before replaying to it").into()
            );
        }
        Ok(self.store.replay_failed_deliveries(endpoint_id, since, self.clock.now()).await?)
    }
}
