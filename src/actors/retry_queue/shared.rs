//! Mirroring the endpoints other nodes created, changed or deleted (with a shared engine):
//! each announced change is applied to this node's outbox and targets, and a full read of
//! the store at start and after an outage catches up with what was missed.

use actix::prelude::*;

use super::RetryQueue;
use crate::actors::webhook_target::Reconfigure;
use crate::webhooks::outbox::EndpointPatch;
use crate::webhooks::shared::{EndpointsChanged, SharedEndpoint, SharedEndpoints};
use crate::webhooks::WebhookError;

impl RetryQueue {
    /// Starts watching the shared store and reads it once.
    pub(super) fn watch_shared_endpoints(&mut self, ctx: &mut Context<Self>) {
        if let Some(store) = &self.store {
            store.watch(ctx.address().recipient());
            self.read_shared_endpoints(ctx);
        }
    }

    fn read_shared_endpoints(&mut self, ctx: &mut Context<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        ctx.spawn(
            store
                .snapshot()
                .into_actor(self)
                .map(|snapshot, act, ctx| match snapshot {
                    Ok(snapshot) => act.catch_up(snapshot, ctx),
                    // The engine sends a Resync once it reaches its store again.
                    Err(err) => log::warn!("webhooks: shared endpoints not read: {err}"),
                }),
        );
    }

    /// Applies everything stored; shares this node's API endpoints the store does not know
    /// (created while it was standalone or unreachable) unless they were deleted elsewhere.
    fn catch_up(&mut self, snapshot: SharedEndpoints, ctx: &mut Context<Self>) {
        for id in &snapshot.deleted {
            self.forget_endpoint(id, ctx);
        }
        let known: std::collections::HashSet<&str> =
            snapshot.endpoints.iter().map(|e| e.id.as_str()).collect();
        let unshared: Vec<SharedEndpoint> = self
            .targets
            .values()
            .filter(|t| !t.endpoint.from_config && !known.contains(t.endpoint.id.as_str()))
            .filter(|t| !snapshot.deleted.contains(&t.endpoint.id))
            .map(|t| SharedEndpoint::from(&t.endpoint))
            .collect();
        for endpoint in snapshot.endpoints {
            self.mirror_endpoint(endpoint, ctx);
        }
        if let Some(store) = &self.store {
            for endpoint in unshared {
                let id = endpoint.id.clone();
                let saving = store.save(endpoint);
                actix::spawn(async move {
                    if let Err(err) = saving.await {
                        log::warn!("webhooks: endpoint {id} not shared yet: {err}");
                    }
                });
            }
        }
    }

    /// Creates or updates a shared endpoint here, keeping its deliveries and local failure
    /// state (the API's enabled state wins).
    fn mirror_endpoint(&mut self, shared: SharedEndpoint, ctx: &mut Context<Self>) {
        let id = shared.id.clone();
        let exists = self.targets.contains_key(&id);
        let stored = if exists {
            let current = &self.targets[&id].endpoint;
            if SharedEndpoint::from(current) == shared {
                return; // this node's own change coming back, or nothing new
            }
            let enabled = (current.enabled != shared.enabled).then_some(shared.enabled);
            let d = shared.definition;
            self.outbox.update_endpoint(
                &id,
                EndpointPatch {
                    url: Some(d.url),
                    events: Some(d.events),
                    rooms: Some(d.rooms),
                    rate_limit_per_s: Some(d.rate_limit_per_s),
                    secret: Some(d.secret),
                    enabled,
                },
            )
        } else {
            let enabled = shared.enabled;
            self.outbox
                .insert_shared_endpoint(&id, shared.definition, shared.created_at)
                .and_then(|e| {
                    if enabled {
                        Ok(e)
                    } else {
                        self.outbox.update_endpoint(
                            &id,
                            EndpointPatch {
                                enabled: Some(false),
                                ..Default::default()
                            },
                        )
                    }
                })
        };
        let endpoint = match stored {
            Ok(endpoint) => endpoint,
            Err(err) => {
                self.storage_failed(&format!("mirroring shared endpoint {id}"), &err);
                return;
            }
        };
        match self.targets.get_mut(&id) {
            Some(target) => {
                target.addr.do_send(Reconfigure(endpoint.clone()));
                target.endpoint = endpoint;
            }
            None => self.start_target(endpoint, ctx),
        }
        log::info!("webhooks: endpoint {id} mirrored from the shared store");
        self.publish_filters();
        self.pump(&id, ctx);
    }

    /// Deletes an endpoint another node deleted, if this node has it.
    pub(super) fn forget_endpoint(&mut self, id: &str, ctx: &mut Context<Self>) {
        if !self.targets.contains_key(id) {
            return;
        }
        if let Err(err) = self.delete(id, ctx) {
            self.storage_failed(&format!("deleting shared endpoint {id}"), &err);
        }
    }
}

impl RetryQueue {
    /// Answers `value` once `change` is shared with the other nodes (at once without a
    /// shared store). When sharing fails, `undo` runs and the caller gets `NotShared`.
    pub(super) fn shared_then<T: 'static>(
        &self,
        change: EndpointsChanged,
        value: T,
        undo: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
        what: &'static str,
    ) -> ResponseActFuture<Self, Result<T, WebhookError>> {
        let Some(store) = &self.store else {
            return Box::pin(fut::ready(Ok(value)));
        };
        let sharing = match change {
            EndpointsChanged::Saved(endpoint) => store.save(endpoint),
            EndpointsChanged::Removed(id) => store.remove(id),
            EndpointsChanged::Resync => return Box::pin(fut::ready(Ok(value))),
        };
        Box::pin(
            sharing
                .into_actor(self)
                .map(move |shared, act, ctx| match shared {
                    Ok(()) => Ok(value),
                    Err(err) => {
                        undo(act, ctx);
                        Err(WebhookError::NotShared(format!("{what} ({err}); retry")))
                    }
                }),
        )
    }
}

impl Handler<EndpointsChanged> for RetryQueue {
    type Result = ();

    fn handle(&mut self, change: EndpointsChanged, ctx: &mut Self::Context) {
        match change {
            EndpointsChanged::Saved(endpoint) => self.mirror_endpoint(endpoint, ctx),
            EndpointsChanged::Removed(id) => self.forget_endpoint(&id, ctx),
            EndpointsChanged::Resync => self.read_shared_endpoints(ctx),
        }
    }
}
