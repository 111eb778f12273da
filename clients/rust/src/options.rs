//! Connection options: token, timeouts, backoff.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type TokenFn = dyn Fn() -> TokenFuture + Send + Sync;

/// Where the client's JWT comes from. It is sent as `Authorization: Bearer <token>`.
#[derive(Clone, Default)]
pub enum Token {
    /// No token: an anonymous session (when the broker allows them).
    #[default]
    None,
    /// The same token on every connection attempt.
    Static(String),
    /// An async callback called before every connection attempt (so an expired token is
    /// replaced); an `Err` counts as a failed attempt and is retried with backoff.
    Refresh(Arc<TokenFn>),
}

impl Token {
    /// A token refreshed by `f` before every connection attempt.
    ///
    /// ```
    /// # use switchboard_client::Token;
    /// let token = Token::refresh(|| async { Ok::<_, String>("jwt".to_string()) });
    /// ```
    pub fn refresh<F, Fut>(f: F) -> Token
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Token::Refresh(Arc::new(move || Box::pin(f())))
    }

    pub(crate) async fn get(&self) -> Result<Option<String>, String> {
        match self {
            Token::None => Ok(None),
            Token::Static(t) => Ok(Some(t.clone())),
            Token::Refresh(f) => f().await.map(Some),
        }
    }

    pub(crate) fn is_refresh(&self) -> bool {
        matches!(self, Token::Refresh(_))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::None => f.write_str("Token::None"),
            Token::Static(_) => f.write_str("Token::Static(<redacted>)"),
            Token::Refresh(_) => f.write_str("Token::Refresh(<callback>)"),
        }
    }
}

impl From<&str> for Token {
    fn from(t: &str) -> Token {
        Token::Static(t.to_owned())
    }
}

impl From<String> for Token {
    fn from(t: String) -> Token {
        Token::Static(t)
    }
}

/// Exponential backoff between reconnection attempts: `initial`, 2×, 4×, … capped at `max`,
/// each delay drawn from `[base × (1 − jitter), base]` so clients dropped together do not
/// come back together.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (default 1 s).
    pub initial: Duration,
    /// Upper bound of any delay (default 30 s).
    pub max: Duration,
    /// Attempts after a drop before the client gives up and closes (default: unlimited).
    pub max_attempts: Option<u32>,
    /// Fraction of each delay that is random, 0.0..=1.0 (default 0.5).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            max_attempts: None,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before attempt number `attempt` (1-based), with `random` in `0.0..1.0`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let base = self.initial.as_secs_f64() * factor;
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * (1.0 - jitter * random.clamp(0.0, 1.0)))
    }
}

/// How [`Client::connect`](crate::Client::connect) connects and reconnects.
#[derive(Debug, Clone)]
pub struct Options {
    /// The JWT (default: none, an anonymous session).
    pub token: Token,
    /// Bound on one connection attempt: TCP, WebSocket handshake and the broker's
    /// `system.connection.established` (default 10 s).
    pub connect_timeout: Duration,
    /// Backoff between reconnection attempts; `None` never reconnects.
    pub reconnect: Option<Backoff>,
    /// Close codes after which the client does not reconnect (default 4000, authentication
    /// failed, and 1008, disconnected through the HTTP API). With [`Token::Refresh`] a 4000
    /// gets one immediate retry with a fresh token first.
    pub permanent_close_codes: Vec<u16>,
    /// The broker's `limits.max_frame_bytes` (default 65 536): larger frames are refused
    /// locally with [`Error::TooLarge`](crate::Error::TooLarge).
    pub max_frame_bytes: usize,
    /// A connection that carries no frame for twice the broker's heartbeat interval plus
    /// this grace is taken for dead and replaced (default 5 s).
    pub heartbeat_grace: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            token: Token::None,
            connect_timeout: Duration::from_secs(10),
            reconnect: Some(Backoff::default()),
            permanent_close_codes: vec![4000, 1008],
            max_frame_bytes: 65_536,
            heartbeat_grace: Duration::from_secs(5),
        }
    }
}

impl Options {
    /// Default options with `token`.
    pub fn with_token(token: impl Into<Token>) -> Options {
        Options {
            token: token.into(),
            ..Options::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let secs: Vec<u64> = (1..=7).map(|a| b.delay(a, 0.9).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(1000, 0.5), Duration::from_secs(30));
    }

    #[test]
    fn jitter_draws_below_the_base() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(2));
    }
}
