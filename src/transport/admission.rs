//! Connection caps, checked before a WebSocket upgrade: how many connections this broker
//! holds (`limits.max_connections`), how many one IP address holds
//! (`limits.max_connections_per_ip`), and how fast one IP address may open them
//! (`limits.handshakes_per_second_per_ip`).
//!
//! A refused handshake is answered with a plain HTTP status (503 when the broker is full,
//! 429 for one address over its share) and costs no session, no buffers and no token check:
//! the caps exist to keep a flood from reaching the parts that cost memory. Every admitted
//! connection holds a [`Permit`] until its session ends; dropping the permit gives the place
//! back, so the counts cannot leak even when a session dies abnormally.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitsConfig;

/// The rate limiter's per-address state is pruned once it holds this many addresses.
const PRUNE_AT: usize = 10_000;

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached: 503.
    Full {
        /// The cap.
        max: usize,
    },
    /// `max_connections_per_ip` reached for this address: 429.
    TooManyFromAddress {
        /// The cap.
        max: usize,
    },
    /// `handshakes_per_second_per_ip` exceeded for this address: 429.
    HandshakeRate {
        /// When the address may try again.
        retry_after: Duration,
    },
}

impl Refused {
    /// The label of `switchboard_connections_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Full { .. } => "max_connections",
            Refused::TooManyFromAddress { .. } => "max_connections_per_ip",
            Refused::HandshakeRate { .. } => "handshake_rate",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full { max } => {
                write!(f, "the broker holds its maximum of {max} connections")
            }
            Refused::TooManyFromAddress { max } => {
                write!(f, "this address holds its maximum of {max} connections")
            }
            Refused::HandshakeRate { .. } => {
                f.write_str("too many connection attempts from this address")
            }
        }
    }
}

/// The caps and the live counts.
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    live: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    handshakes: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Admission {
    /// The caps of `[limits]` (0 turns a cap off).
    pub fn new(limits: &LimitsConfig) -> Arc<Admission> {
        let handshakes = NonZeroU32::new(limits.handshakes_per_second_per_ip).map(|rate| {
            let burst = NonZeroU32::new(limits.handshake_burst_per_ip).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(Admission {
            max_total: limits.max_connections,
            max_per_address: limits.max_connections_per_ip,
            live: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            handshakes,
        })
    }

    /// Admits one connection from `address` (`None`: unknown, e.g. a Unix socket; only
    /// the global cap applies), or says why not. The handshake counts against the
    /// address's rate whether or not it is admitted.
    pub fn admit(self: &Arc<Self>, address: Option<IpAddr>) -> Result<Permit, Refused> {
        if let (Some(limiter), Some(ip)) = (&self.handshakes, address) {
            if limiter.len() >= PRUNE_AT {
                limiter.retain_recent();
            }
            if let Err(not_until) = limiter.check_key(&ip) {
                return Err(Refused::HandshakeRate {
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                });
            }
        }
        // Taken first and given back on refusal, so two racing handshakes cannot both take
        // the last place.
        let before = self.live.fetch_add(1, Ordering::AcqRel);
        if self.max_total > 0 && before >= self.max_total {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Full {
                max: self.max_total,
            });
        }
        let counted = match address {
            Some(ip) if self.max_per_address > 0 => {
                let mut per_address = self.lock();
                let held = per_address.entry(ip).or_insert(0);
                if *held >= self.max_per_address {
                    drop(per_address);
                    self.live.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refused::TooManyFromAddress {
                        max: self.max_per_address,
                    });
                }
                *held += 1;
                Some(ip)
            }
            _ => None,
        };
        Ok(Permit {
            admission: self.clone(),
            address: counted,
        })
    }

    /// Connections holding a permit now.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Connections `address` holds now (counted only while a per-address cap is set).
    #[cfg(test)]
    pub fn held_by(&self, address: IpAddr) -> usize {
        self.lock().get(&address).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map only holds counts, each updated in one step: a panic elsewhere while it
        // was held cannot have left it half-written.
        self.per_address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One admitted connection's place; given back when dropped.
pub struct Permit {
    admission: Arc<Admission>,
    address: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ip) = self.address {
            let mut per_address = self.admission.lock();
            if let Some(held) = per_address.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    per_address.remove(&ip);
                }
            }
        }
        self.admission.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("address", &self.address)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize, rate: u32, burst: u32) -> LimitsConfig {
        LimitsConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            handshakes_per_second_per_ip: rate,
            handshake_burst_per_ip: burst,
            ..LimitsConfig::default()
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn the_global_cap_refuses_the_next_and_a_dropped_permit_frees_a_place() {
        let admission = Admission::new(&limits(2, 0, 0, 0));
        let first = admission.admit(Some(A)).expect("first");
        let _second = admission.admit(Some(B)).expect("second");
        assert!(matches!(
            admission.admit(None),
            Err(Refused::Full { max: 2 })
        ));
        assert_eq!(admission.live(), 2);
        drop(first);
        assert_eq!(admission.live(), 1);
        assert!(admission.admit(Some(A)).is_ok());
    }

    #[test]
    fn the_per_address_cap_counts_each_address_apart() {
        let admission = Admission::new(&limits(0, 2, 0, 0));
        let a1 = admission.admit(Some(A)).expect("a1");
        let _a2 = admission.admit(Some(A)).expect("a2");
        assert!(matches!(
            admission.admit(Some(A)),
            Err(Refused::TooManyFromAddress { max: 2 })
        ));
        // The refusal gave its global place back.
        assert_eq!(admission.live(), 2);
        let _b = admission.admit(Some(B)).expect("another address");
        assert_eq!(admission.held_by(A), 2);
        drop(a1);
        assert_eq!(admission.held_by(A), 1);
        assert!(admission.admit(Some(A)).is_ok());
        // Unknown addresses (Unix sockets) are not per-address counted.
        assert!(admission.admit(None).is_ok());
    }

    #[test]
    fn the_handshake_rate_refuses_a_burst_beyond_its_allowance_per_address() {
        let admission = Admission::new(&limits(0, 0, 1, 3));
        let permits: Vec<_> = (0..3)
            .map(|_| admission.admit(Some(A)).expect("within the burst"))
            .collect();
        match admission.admit(Some(A)) {
            Err(Refused::HandshakeRate { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("expected a rate refusal, got {other:?}"),
        }
        // Another address has its own allowance; closing connections does not refill it.
        assert!(admission.admit(Some(B)).is_ok());
        drop(permits);
        assert!(matches!(
            admission.admit(Some(A)),
            Err(Refused::HandshakeRate { .. })
        ));
    }

    #[test]
    fn with_no_caps_everything_is_admitted_and_still_counted() {
        let admission = Admission::new(&limits(0, 0, 0, 0));
        let permits: Vec<_> = (0..100)
            .map(|_| admission.admit(Some(A)).expect("admitted"))
            .collect();
        assert_eq!(admission.live(), 100);
        assert_eq!(admission.held_by(A), 0);
        drop(permits);
        assert_eq!(admission.live(), 0);
    }
}
