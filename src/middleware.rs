//! Middleware run by the Router around every application handler call: authorisation,
//! per-user rate limiting and request logging. Embedders add their own with
//! [`crate::Broker::add_middleware`].

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::actors::router::{HandlerError, HandlerRequest, Reply};
use crate::protocol::ErrorCode;

/// A step in the handler chain.
pub trait Middleware: Send + Sync + 'static {
    /// Runs before the handler; an error answers the caller and skips the handler.
    fn before(&self, _req: &HandlerRequest) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Runs after the handler (or after a `before` refusal), with the outcome.
    fn after(
        &self,
        _req: &HandlerRequest,
        _result: &Result<Reply, HandlerError>,
        _elapsed: Duration,
    ) {
    }
}

/// Refuses anonymous callers unless `router.allow_anonymous` is set.
pub struct Authorize {
    /// Whether anonymous sessions may call handlers.
    pub allow_anonymous: bool,
}

impl Middleware for Authorize {
    fn before(&self, req: &HandlerRequest) -> Result<(), HandlerError> {
        if req.anonymous && !self.allow_anonymous {
            return Err(HandlerError::new(
                ErrorCode::Unauthorized,
                format!("`{}` requires an authenticated session", req.msg_type),
            ));
        }
        Ok(())
    }
}

/// Limits application requests per user (all of a user's sessions share the budget).
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
}

impl RateLimit {
    /// `per_second` requests per user, with the same burst.
    pub fn per_second(per_second: NonZeroU32) -> RateLimit {
        RateLimit {
            limiter: RateLimiter::keyed(Quota::per_second(per_second)),
        }
    }
}

impl Middleware for RateLimit {
    fn before(&self, req: &HandlerRequest) -> Result<(), HandlerError> {
        self.limiter
            .check_key(&req.user)
            .map_err(|_| HandlerError::new(ErrorCode::RateLimited, "too many requests; slow down"))
    }
}

/// Logs every handler call with its connection, type, outcome and duration.
pub struct RequestLog;

impl Middleware for RequestLog {
    fn after(&self, req: &HandlerRequest, result: &Result<Reply, HandlerError>, elapsed: Duration) {
        match result {
            Ok(reply) => log::debug!(
                "conn={} user={} request type={} -> {} in {elapsed:?}",
                req.connection_id,
                req.user,
                req.msg_type,
                reply.msg_type
            ),
            Err(err) => log::info!(
                "conn={} user={} request type={} -> error {} in {elapsed:?}",
                req.connection_id,
                req.user,
                req.msg_type,
                err.code
            ),
        }
    }
}

/// The chain every broker starts with, from config.
pub fn default_chain(config: &crate::config::RouterConfig) -> Vec<Arc<dyn Middleware>> {
    let mut chain: Vec<Arc<dyn Middleware>> = vec![Arc::new(Authorize {
        allow_anonymous: config.allow_anonymous,
    })];
    if let Some(rps) = NonZeroU32::new(config.requests_per_second) {
        chain.push(Arc::new(RateLimit::per_second(rps)));
    }
    chain.push(Arc::new(RequestLog));
    chain
}
