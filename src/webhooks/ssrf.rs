//! SSRF guard for outbound webhooks: which URLs and addresses the broker refuses to call.
//!
//! A webhook URL comes from a client of the HTTP API, so without a guard anyone allowed to
//! register an endpoint could make the broker call its own admin ports, the cloud metadata
//! service (credentials!) or anything else on the private network. The guard runs at
//! registration and again before every delivery:
//!
//! 1. [`check_url`] parses the URL with the WHATWG parser of the `url` crate (which also
//!    normalises odd IPv4 spellings such as `http://2130706433/`, `http://0x7f.1/` and
//!    `http://017700000001/` to `127.0.0.1`), allows only `http`/`https` (only `https` unless
//!    [`SsrfPolicy::allow_http`]), refuses credentials in the URL and cloud metadata host
//!    names, and checks IP-literal hosts at once. It returns a [`Target`].
//! 2. [`resolve_checked`] (blocking; [`resolve_checked_async`] runs it on the blocking pool)
//!    resolves the target's host and checks *every* address with [`check_ip`]: a name with
//!    one public and one private address is refused. The caller must connect to exactly the
//!    returned addresses and never resolve the name again, or a DNS-rebinding server could
//!    answer differently the second time. The caller must also not follow redirects (a
//!    redirect is a new, unchecked URL).
//!
//! [`check_ip`] refuses loopback, private, shared (CGNAT), link-local, unique-local,
//! multicast, unspecified, broadcast, documentation, benchmarking and reserved ranges, IPv6
//! outside global unicast, and IPv6 forms that embed a refused IPv4 address (IPv4-mapped,
//! -compatible, -translated, NAT64, 6to4). The ranges are listed in one table per family
//! below, implemented with a tiny CIDR type (the std `is_global` family is unstable).
//!
//! An explicit allowlist ([`SsrfPolicy::allow`], CIDRs or exact host names) lets development
//! setups and the test suite reach e.g. `127.0.0.1`. It bypasses the address checks (and, for
//! a host rule naming exactly that host, the metadata-name check), but never the scheme,
//! https-only or credentials checks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a URL or an address was refused; the message says what was wrong and why, e.g.
/// `127.0.0.1 is blocked: loopback`. Messages never repeat credentials from the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The string is not an absolute URL with a usable host and port.
    #[error("invalid webhook URL: {0}")]
    BadUrl(String),
    /// The scheme is not `http` or `https` (e.g. `ftp`, `file`, `gopher`).
    #[error("scheme {0:?} is not allowed: webhook URLs must be http or https")]
    Scheme(String),
    /// The scheme is `http` but the policy requires `https` (production mode).
    #[error("webhook URLs must use https (plain http is only allowed in development mode)")]
    HttpsRequired,
    /// The URL carries a user name or password (they would leak into logs and requests).
    #[error("webhook URLs must not contain a user name or password")]
    Credentials,
    /// The host is a cloud metadata service name (e.g. `metadata.google.internal`).
    #[error("{0} is blocked: cloud metadata service")]
    MetadataHost(String),
    /// An address of the target is in a refused range. The message says how to allow a
    /// receiver of one's own there (a local receiver in development, say).
    #[error("{addr} is blocked: {reason}{}; if the receiver there is yours, allow it with webhooks.allow = [\"{}\"]", via_note(.via), allow_rule(.addr))]
    Blocked {
        /// The refused address, as the URL or the resolver gave it.
        addr: IpAddr,
        /// The refused range, e.g. `loopback`; for an embedded IPv4 address, its range.
        reason: &'static str,
        /// Set when `addr` is IPv6 embedding an IPv4 address (mapped, NAT64, 6to4, …).
        via: Option<Embedded>,
    },
    /// The host name could not be resolved.
    #[error("could not resolve {0}")]
    Resolve(String),
    /// The host name resolved to no addresses at all.
    #[error("{0} resolved to no addresses")]
    NoAddresses(String),
}

/// An IPv4 address embedded in an IPv6 address, and how: the detail of a
/// [`SsrfError::Blocked`] for e.g. `::ffff:127.0.0.1` or `2002:7f00:1::`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    /// The embedding form, e.g. `IPv4-mapped` or `6to4`.
    pub form: &'static str,
    /// The embedded IPv4 address, which is in the refused range.
    pub ipv4: Ipv4Addr,
}

/// The allowlist rule that would let `addr` through: its /32 or /128.
fn allow_rule(addr: &IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn via_note(via: &Option<Embedded>) -> String {
    match via {
        Some(e) => format!(" ({} IPv6 address of {})", e.form, e.ipv4),
        None => String::new(),
    }
}

/// A URL that passed [`check_url`]: what to resolve with [`resolve_checked`] and what to
/// send. Build it with [`check_url`] only; a hand-made one skips the URL checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The parsed, normalised URL (use it for the request line and the `Host` header).
    pub url: url::Url,
    /// The host: a lower-case ASCII domain, or an IP literal (IPv6 without brackets).
    pub host: String,
    /// The port, explicit or the scheme's default (80 or 443).
    pub port: u16,
}

/// The SSRF guard's configuration: whether plain http is allowed, and the allowlist.
///
/// `Default` is the production setting: https only, nothing allowlisted. In TOML:
/// `allow_http = true` and `allow = ["127.0.0.0/8", "::1/128", "localhost"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsrfPolicy {
    /// Allow `http://` URLs (development); when false only `https://` is accepted.
    pub allow_http: bool,
    /// Destinations exempt from the address checks (not from the scheme, https-only or
    /// credentials checks): for development setups and the test suite.
    pub allow: Vec<AllowRule>,
}

impl SsrfPolicy {
    /// Whether `ip` is allowlisted by a CIDR rule (an IPv4-mapped IPv6 address also matches
    /// rules for its IPv4 address, since it is the same destination).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow.iter().any(|rule| match rule {
            AllowRule::Cidr(cidr) => {
                cidr.contains(ip) || mapped.is_some_and(|v4| cidr.contains(v4))
            }
            AllowRule::Host(_) => false,
        })
    }

    /// Whether the host name `host` is allowlisted by a host rule (exact match, ignoring
    /// case and a trailing dot). IP literals are matched by [`SsrfPolicy::allows_ip`].
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalise_name(host);
        self.allow
            .iter()
            .any(|rule| matches!(rule, AllowRule::Host(name) if *name == host))
    }
}

/// One allowlist entry: a CIDR (`127.0.0.0/8`, `::1/128`, or a bare address) or an exact
/// host name (`localhost`, `receiver.internal`; case-insensitive, no wildcards).
///
/// Parsed from a string with [`FromStr`] (and so from config); displayed the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AllowRule {
    /// Addresses in this network are allowed.
    Cidr(Cidr),
    /// This host name (lower-case ASCII, no trailing dot) is allowed, whatever it resolves to.
    Host(String),
}

/// Why an allowlist rule string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SSRF allowlist rule {rule:?}: {reason}")]
pub struct AllowRuleError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub reason: String,
}

impl AllowRuleError {
    fn new(rule: &str, reason: impl Into<String>) -> Self {
        AllowRuleError {
            rule: rule.to_owned(),
            reason: reason.into(),
        }
    }
}

impl FromStr for AllowRule {
    type Err = AllowRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rule = s.trim();
        if rule.is_empty() {
            return Err(AllowRuleError::new(
                s,
                "empty; expected a CIDR or a host name",
            ));
        }
        if rule.contains("://") {
            return Err(AllowRuleError::new(
                s,
                "looks like a URL; write only the host name or a CIDR",
            ));
        }
        if rule.contains('/') {
            return rule.parse::<Cidr>().map(AllowRule::Cidr);
        }
        let bare = rule
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(rule);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(AllowRule::Cidr(Cidr::host(ip)));
        }
        if rule.contains('*') {
            return Err(AllowRuleError::new(
                s,
                "wildcards are not supported; list each host name, or use a CIDR",
            ));
        }
        if rule.contains(':') {
            return Err(AllowRuleError::new(
                s,
                "neither an IP address nor a host name (ports are not part of a rule)",
            ));
        }
        // Normalise exactly as URLs are normalised, so the rule matches `Target::host`
        // (lower case, IDNA to punycode, numeric spellings to an IPv4 address).
        match url::Host::parse(rule) {
            Ok(url::Host::Domain(name)) => {
                let name = normalise_name(&name);
                if name.is_empty() || name.split('.').any(str::is_empty) {
                    Err(AllowRuleError::new(s, "not a valid host name"))
                } else {
                    Ok(AllowRule::Host(name))
                }
            }
            Ok(url::Host::Ipv4(ip)) => Ok(AllowRule::Cidr(Cidr::host(IpAddr::V4(ip)))),
            Ok(url::Host::Ipv6(ip)) => Ok(AllowRule::Cidr(Cidr::host(IpAddr::V6(ip)))),
            Err(e) => Err(AllowRuleError::new(
                s,
                format!("not a valid host name: {e}"),
            )),
        }
    }
}

impl TryFrom<String> for AllowRule {
    type Error = AllowRuleError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AllowRule> for String {
    fn from(rule: AllowRule) -> String {
        rule.to_string()
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowRule::Cidr(cidr) => cidr.fmt(f),
            AllowRule::Host(name) => f.write_str(name),
        }
    }
}

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `fc00::/7`): the allowlist's address rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; rejects a prefix longer than the address and set host
    /// bits (`127.0.0.1/8` is almost always a typo for `127.0.0.0/8` or `127.0.0.1/32`).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, AllowRuleError> {
        let written = format!("{addr}/{prefix}");
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(AllowRuleError::new(
                &written,
                format!("prefix length {prefix} is longer than {max} bits"),
            ));
        }
        let cidr = Cidr { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(AllowRuleError::new(
                &written,
                format!("host bits are set; did you mean {network}/{prefix}?"),
            ));
        }
        Ok(cidr)
    }

    /// The single-address network of `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network (an IPv4 network never contains an IPv6 address and
    /// vice versa).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip.to_bits(), net.to_bits(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip.to_bits(), net.to_bits(), self.prefix),
            _ => false,
        }
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask_v4(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask_v6(self.prefix))),
        }
    }
}

impl FromStr for Cidr {
    type Err = AllowRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(|| {
            AllowRuleError::new(s, "expected ADDRESS/PREFIX, e.g. 127.0.0.0/8 or ::1/128")
        })?;
        let addr: IpAddr = addr.parse().map_err(|_| {
            AllowRuleError::new(s, format!("{addr:?} is not an IPv4 or IPv6 address"))
        })?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| AllowRuleError::new(s, format!("{prefix:?} is not a prefix length")))?;
        Cidr::new(addr, prefix).map_err(|e| AllowRuleError::new(s, e.reason))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

fn in_v4(ip: u32, net: u32, prefix: u8) -> bool {
    ip & mask_v4(prefix) == net
}

fn in_v6(ip: u128, net: u128, prefix: u8) -> bool {
    ip & mask_v6(prefix) == net
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    Ipv4Addr::new(a, b, c, d).to_bits()
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16) -> u128 {
    Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits()
}

/// Refused IPv4 ranges, most specific first (the first match names the reason).
const BLOCKED_V4: &[(u32, u8, &str)] = &[
    (v4(255, 255, 255, 255), 32, "broadcast"),
    (v4(0, 0, 0, 0), 32, "unspecified"),
    (v4(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (v4(10, 0, 0, 0), 8, "private network"),
    (v4(100, 64, 0, 0), 10, "shared address space (CGNAT)"),
    (v4(127, 0, 0, 0), 8, "loopback"),
    (v4(169, 254, 0, 0), 16, "link-local"),
    (v4(172, 16, 0, 0), 12, "private network"),
    (
        v4(192, 0, 0, 0),
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (v4(192, 0, 2, 0), 24, "documentation (TEST-NET-1)"),
    (v4(192, 88, 99, 0), 24, "6to4 relay anycast (deprecated)"),
    (v4(192, 168, 0, 0), 16, "private network"),
    (v4(198, 18, 0, 0), 15, "benchmarking"),
    (v4(198, 51, 100, 0), 24, "documentation (TEST-NET-2)"),
    (v4(203, 0, 113, 0), 24, "documentation (TEST-NET-3)"),
    (v4(224, 0, 0, 0), 4, "multicast"),
    (v4(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
    // A public address, but inside Azure it reaches the host's platform agent (WireServer).
    (
        v4(168, 63, 129, 16),
        32,
        "Azure platform endpoint (WireServer)",
    ),
];

/// Refused IPv6 ranges, most specific first; checked after the embedded-IPv4 forms.
const BLOCKED_V6: &[(u128, u8, &str)] = &[
    (v6(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (v6(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    (v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "local-use NAT64"),
    (v6(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only"),
    (v6(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "Teredo tunnelling"),
    (v6(0x2001, 2, 0, 0, 0, 0, 0, 0), 48, "benchmarking"),
    (
        v6(0x2001, 0x10, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHID (non-routable)",
    ),
    (
        v6(0x2001, 0x20, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHIDv2 (non-routable)",
    ),
    (v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, "documentation"),
    (v6(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, "documentation"),
    (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local (ULA)"),
    (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (
        v6(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "site-local (deprecated)",
    ),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// Only global unicast (2000::/3) is reachable on the internet; everything else not named
/// above is reserved.
const GLOBAL_UNICAST_V6: (u128, u8) = (v6(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// IPv6 forms that embed an IPv4 address: (network, prefix, form, shift): the IPv4
/// address is the 32 bits above bit `shift` (6to4 puts it right after the 2002::/16 prefix).
const EMBEDDING_V6: &[(u128, u8, &str, u32)] = &[
    (v6(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, "IPv4-mapped", 0),
    (v6(0, 0, 0, 0, 0xffff, 0, 0, 0), 96, "IPv4-translated", 0),
    (v6(0, 0, 0, 0, 0, 0, 0, 0), 96, "IPv4-compatible", 0),
    (v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, "NAT64", 0),
    (v6(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "6to4", 80),
];

/// Why `ip` is refused without an allowlist, or `None` when it may be called.
fn blocked_reason(ip: IpAddr) -> Option<(&'static str, Option<Embedded>)> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4).map(|reason| (reason, None)),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            // `::` and `::1` first: they are not IPv4-compatible addresses.
            for &(net, prefix, reason) in &BLOCKED_V6[..2] {
                if in_v6(bits, net, prefix) {
                    return Some((reason, None));
                }
            }
            for &(net, prefix, form, shift) in EMBEDDING_V6 {
                if in_v6(bits, net, prefix) {
                    let ipv4 = Ipv4Addr::from_bits((bits >> shift) as u32);
                    return v4_reason(ipv4).map(|reason| (reason, Some(Embedded { form, ipv4 })));
                }
            }
            for &(net, prefix, reason) in &BLOCKED_V6[2..] {
                if in_v6(bits, net, prefix) {
                    return Some((reason, None));
                }
            }
            let (net, prefix) = GLOBAL_UNICAST_V6;
            if !in_v6(bits, net, prefix) {
                return Some(("reserved (outside global unicast 2000::/3)", None));
            }
            None
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = ip.to_bits();
    BLOCKED_V4
        .iter()
        .find(|&&(net, prefix, _)| in_v4(bits, net, prefix))
        .map(|&(_, _, reason)| reason)
}

/// Cloud metadata service names (and their subdomains); their addresses are also refused
/// (169.254.169.254, 100.100.100.200, fd00:ec2::254, 192.0.0.192), this catches a resolver
/// that maps the names elsewhere.
const METADATA_HOSTS: &[&str] = &[
    "metadata.google.internal", // GCP
    "metadata.goog",            // GCP
    "metadata",                 // GCP short name, also used by other clouds' search domains
    "instance-data",            // AWS
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",      // Tencent Cloud
    "metadata.platformequinix.com", // Equinix Metal
    "rancher-metadata",             // Rancher
];

fn normalise_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_metadata_host(host: &str) -> bool {
    let host = normalise_name(host);
    METADATA_HOSTS.iter().any(|m| {
        host == *m
            || host
                .strip_suffix(m)
                .is_some_and(|prefix| prefix.ends_with('.'))
    })
}

/// Refuses `ip` if it is in a refused range (see the module docs) and not allowlisted by a
/// CIDR rule of `policy`. Used by [`check_url`] for IP literals and by [`resolve_checked`]
/// for every resolved address.
pub fn check_ip(ip: IpAddr, policy: &SsrfPolicy) -> Result<(), SsrfError> {
    if policy.allows_ip(ip) {
        return Ok(());
    }
    match blocked_reason(ip) {
        Some((reason, via)) => Err(SsrfError::Blocked {
            addr: ip,
            reason,
            via,
        }),
        None => Ok(()),
    }
}

/// Checks a webhook URL without touching the network: scheme (`http`/`https`, `https` only
/// unless `policy.allow_http`), no credentials, no metadata host name, and for an IP-literal
/// host the address ([`check_ip`]). Returns the [`Target`] to pass to [`resolve_checked`].
pub fn check_url(input: &str, policy: &SsrfPolicy) -> Result<Target, SsrfError> {
    let url = url::Url::parse(input).map_err(|e| SsrfError::BadUrl(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return Err(SsrfError::HttpsRequired),
        other => return Err(SsrfError::Scheme(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SsrfError::Credentials);
    }
    let host = match url.host() {
        None => return Err(SsrfError::BadUrl("the URL has no host".into())),
        Some(url::Host::Ipv4(ip)) => {
            check_ip(IpAddr::V4(ip), policy)?;
            ip.to_string()
        }
        Some(url::Host::Ipv6(ip)) => {
            check_ip(IpAddr::V6(ip), policy)?;
            ip.to_string()
        }
        Some(url::Host::Domain(name)) => {
            check_name(name, policy)?;
            name.to_owned()
        }
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| SsrfError::BadUrl("the URL has no port".into()))?;
    if port == 0 {
        return Err(SsrfError::BadUrl("port 0 cannot be called".into()));
    }
    Ok(Target { url, host, port })
}

fn check_name(name: &str, policy: &SsrfPolicy) -> Result<(), SsrfError> {
    if name.trim_end_matches('.').is_empty() {
        return Err(SsrfError::BadUrl("the URL has an empty host".into()));
    }
    if is_metadata_host(name) && !policy.allows_host(name) {
        return Err(SsrfError::MetadataHost(name.to_owned()));
    }
    Ok(())
}

/// Resolves `target` and checks every address; returns the addresses to connect to.
///
/// Blocking (it may call the system resolver): call it from a blocking thread, or use
/// [`resolve_checked_async`]; bound it with a timeout. IP literals are not looked up. If
/// any address is refused the whole target is (a name with a public and a private address
/// is refused), unless the host name itself is allowlisted. Connect to exactly the returned
/// addresses and do not resolve the name again (DNS rebinding).
pub fn resolve_checked(target: &Target, policy: &SsrfPolicy) -> Result<Vec<SocketAddr>, SsrfError> {
    let host = target.host.as_str();
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        check_ip(ip, policy)?;
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    check_name(host, policy)?;
    let resolved = (host, target.port)
        .to_socket_addrs()
        .map_err(|e| SsrfError::Resolve(format!("{host}: {e}")))?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in resolved {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(SsrfError::NoAddresses(host.to_owned()));
    }
    if !policy.allows_host(host) {
        for addr in &addrs {
            check_ip(addr.ip(), policy)?;
        }
    }
    Ok(addrs)
}

/// [`resolve_checked`] on actix's blocking thread pool, for async callers.
pub async fn resolve_checked_async(
    target: &Target,
    policy: &SsrfPolicy,
) -> Result<Vec<SocketAddr>, SsrfError> {
    let host = target.host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<IpAddr>().is_ok() {
        // An IP literal needs no lookup: no trip to the blocking pool.
        return resolve_checked(target, policy);
    }
    let (target, policy) = (target.clone(), policy.clone());
    actix_rt::task::spawn_blocking(move || resolve_checked(&target, &policy))
        .await
        .map_err(|e| SsrfError::Resolve(format!("resolver task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> SsrfPolicy {
        SsrfPolicy {
            allow_http: true,
            allow: Vec::new(),
        }
    }

    fn prod() -> SsrfPolicy {
        SsrfPolicy::default()
    }

    fn allowing(allow_http: bool, rules: &[&str]) -> SsrfPolicy {
        SsrfPolicy {
            allow_http,
            allow: rules.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    /// What a table row expects from [`check_url`].
    #[derive(Debug)]
    enum Want {
        Ok,
        BadUrl,
        Scheme,
        Https,
        Creds,
        Meta,
        /// Blocked with this reason (for embedded forms: the IPv4 range's reason).
        Blocked(&'static str),
        /// Blocked via this embedding form, with this reason.
        Embedded(&'static str, &'static str),
    }

    fn matches(got: &Result<Target, SsrfError>, want: &Want) -> bool {
        use SsrfError as E;
        match (got, want) {
            (Ok(_), Want::Ok) => true,
            (Err(E::BadUrl(_)), Want::BadUrl) => true,
            (Err(E::Scheme(_)), Want::Scheme) => true,
            (Err(E::HttpsRequired), Want::Https) => true,
            (Err(E::Credentials), Want::Creds) => true,
            (Err(E::MetadataHost(_)), Want::Meta) => true,
            (Err(E::Blocked { reason, via, .. }), Want::Blocked(want)) => {
                reason == want && via.is_none()
            }
            (Err(E::Blocked { reason, via, .. }), Want::Embedded(form, want)) => {
                reason == want && via.is_some_and(|v| v.form == *form)
            }
            _ => false,
        }
    }

    const LOOP: &str = "loopback";
    const PRIV: &str = "private network";
    const CGNAT: &str = "shared address space (CGNAT)";
    const LL: &str = "link-local";
    const ULA: &str = "unique local (ULA)";
    const MC: &str = "multicast";
    const UNSPEC: &str = "unspecified";
    const THISNET: &str = "\"this network\" (0.0.0.0/8)";
    const BCAST: &str = "broadcast";
    const IETF: &str = "IETF protocol assignments (192.0.0.0/24)";
    const BENCH: &str = "benchmarking";
    const RESERVED: &str = "reserved (240.0.0.0/4)";
    const V6RES: &str = "reserved (outside global unicast 2000::/3)";

    /// Every rule of the guard: each blocked range (also IPv4-mapped, NAT64, 6to4 and odd
    /// spellings), metadata hosts, https in production, credentials, schemes and bad URLs,
    /// plus allowed neighbours; policy `dev` allows http and has no allowlist, `prod` is https
    /// only.
    #[test]
    fn table() {
        use Want::*;
        let dev = dev();
        let prod = prod();
        let cases: &[(&str, &SsrfPolicy, Want)] = &[
            // Loopback, including the odd IPv4 spellings the WHATWG parser normalises.
            ("http://127.0.0.1/", &dev, Blocked(LOOP)),
            ("http://127.255.255.254:8080/x", &dev, Blocked(LOOP)),
            ("http://2130706433/", &dev, Blocked(LOOP)),
            ("http://0x7f.1/", &dev, Blocked(LOOP)),
            ("http://017700000001/", &dev, Blocked(LOOP)),
            ("http://0177.0.0.1/", &dev, Blocked(LOOP)),
            ("http://0x7f000001/", &dev, Blocked(LOOP)),
            ("http://127.1/", &dev, Blocked(LOOP)),
            ("http://%31%32%37.0.0.1/", &dev, Blocked(LOOP)),
            (
                "http://\u{2460}\u{2461}\u{2466}.0.0.1/",
                &dev,
                Blocked(LOOP),
            ), // circled digits
            ("http://\u{ff10}x7f.1/", &dev, Blocked(LOOP)), // full-width zero
            (
                "http://127\u{3002}0\u{3002}0\u{3002}1/",
                &dev,
                Blocked(LOOP),
            ),
            ("http://127.0.0.1\t/", &dev, Blocked(LOOP)),
            ("http://127.0.0.1#@example.com/", &dev, Blocked(LOOP)),
            ("https://[::1]/", &prod, Blocked(LOOP)),
            ("http://[0:0:0:0:0:0:0:1]:9000/", &dev, Blocked(LOOP)),
            // Private networks and shared address space.
            ("http://10.0.0.1/", &dev, Blocked(PRIV)),
            ("http://10.255.255.255/", &dev, Blocked(PRIV)),
            ("http://172.16.0.1/", &dev, Blocked(PRIV)),
            ("http://172.31.255.255/", &dev, Blocked(PRIV)),
            ("http://192.168.1.1/", &dev, Blocked(PRIV)),
            ("http://100.64.0.1/", &dev, Blocked(CGNAT)),
            ("http://100.127.255.255/", &dev, Blocked(CGNAT)),
            ("http://100.100.100.200/", &dev, Blocked(CGNAT)), // Alibaba metadata
            // Link-local, including the common metadata address.
            (
                "http://169.254.169.254/latest/meta-data/",
                &dev,
                Blocked(LL),
            ),
            ("http://169.254.0.1/", &dev, Blocked(LL)),
            ("http://[fe80::1]/", &dev, Blocked(LL)),
            ("http://[febf:ffff::1]/", &dev, Blocked(LL)),
            // Unique local, including AWS's IPv6 metadata address.
            ("http://[fc00::1]/", &dev, Blocked(ULA)),
            ("http://[fd00:ec2::254]/", &dev, Blocked(ULA)),
            (
                "http://[fec0::1]/",
                &dev,
                Blocked("site-local (deprecated)"),
            ),
            // Multicast.
            ("http://224.0.0.1/", &dev, Blocked(MC)),
            ("http://239.255.255.250/", &dev, Blocked(MC)),
            ("http://[ff02::1]/", &dev, Blocked(MC)),
            ("http://[ff05::1:3]/", &dev, Blocked(MC)),
            // Unspecified and broadcast.
            ("http://0.0.0.0/", &dev, Blocked(UNSPEC)),
            ("http://0/", &dev, Blocked(UNSPEC)),
            ("http://0.1.2.3/", &dev, Blocked(THISNET)),
            ("http://[::]/", &dev, Blocked(UNSPEC)),
            ("http://255.255.255.255/", &dev, Blocked(BCAST)),
            ("http://0xffffffff/", &dev, Blocked(BCAST)),
            // Special-purpose and reserved ranges.
            ("http://192.0.0.1/", &dev, Blocked(IETF)),
            ("http://192.0.0.192/", &dev, Blocked(IETF)), // Oracle Cloud metadata
            (
                "http://192.0.2.1/",
                &dev,
                Blocked("documentation (TEST-NET-1)"),
            ),
            (
                "http://198.51.100.1/",
                &dev,
                Blocked("documentation (TEST-NET-2)"),
            ),
            (
                "http://203.0.113.1/",
                &dev,
                Blocked("documentation (TEST-NET-3)"),
            ),
            (
                "http://192.88.99.1/",
                &dev,
                Blocked("6to4 relay anycast (deprecated)"),
            ),
            ("http://198.18.0.1/", &dev, Blocked(BENCH)),
            ("http://198.19.255.255/", &dev, Blocked(BENCH)),
            ("http://240.0.0.1/", &dev, Blocked(RESERVED)),
            ("http://254.1.2.3/", &dev, Blocked(RESERVED)),
            (
                "http://168.63.129.16/",
                &dev,
                Blocked("Azure platform endpoint (WireServer)"),
            ),
            ("http://[2001:db8::1]/", &dev, Blocked("documentation")),
            ("http://[3fff::1]/", &dev, Blocked("documentation")),
            ("http://[100::1]/", &dev, Blocked("discard-only")),
            (
                "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
                &dev,
                Blocked("Teredo tunnelling"),
            ),
            ("http://[2001:2::1]/", &dev, Blocked(BENCH)),
            (
                "http://[64:ff9b:1::a00:1]/",
                &dev,
                Blocked("local-use NAT64"),
            ),
            ("http://[4000::1]/", &dev, Blocked(V6RES)),
            ("http://[::1:0:0:1]/", &dev, Blocked(V6RES)),
            // IPv4-mapped IPv6 of each refused IPv4 range.
            (
                "http://[::ffff:127.0.0.1]/",
                &dev,
                Embedded("IPv4-mapped", LOOP),
            ),
            (
                "http://[::ffff:7f00:1]/",
                &dev,
                Embedded("IPv4-mapped", LOOP),
            ),
            (
                "http://[::ffff:10.0.0.1]/",
                &dev,
                Embedded("IPv4-mapped", PRIV),
            ),
            (
                "http://[::ffff:172.16.0.1]/",
                &dev,
                Embedded("IPv4-mapped", PRIV),
            ),
            (
                "http://[::ffff:192.168.0.1]/",
                &dev,
                Embedded("IPv4-mapped", PRIV),
            ),
            (
                "http://[::ffff:100.64.0.1]/",
                &dev,
                Embedded("IPv4-mapped", CGNAT),
            ),
            (
                "http://[::ffff:169.254.169.254]/",
                &dev,
                Embedded("IPv4-mapped", LL),
            ),
            (
                "http://[::ffff:224.0.0.1]/",
                &dev,
                Embedded("IPv4-mapped", MC),
            ),
            (
                "http://[::ffff:0.0.0.0]/",
                &dev,
                Embedded("IPv4-mapped", UNSPEC),
            ),
            (
                "http://[::ffff:255.255.255.255]/",
                &dev,
                Embedded("IPv4-mapped", BCAST),
            ),
            (
                "http://[::ffff:240.0.0.1]/",
                &dev,
                Embedded("IPv4-mapped", RESERVED),
            ),
            // IPv4-compatible (deprecated) and IPv4-translated (SIIT).
            (
                "http://[::127.0.0.1]/",
                &dev,
                Embedded("IPv4-compatible", LOOP),
            ),
            (
                "http://[::10.0.0.1]/",
                &dev,
                Embedded("IPv4-compatible", PRIV),
            ),
            (
                "http://[::169.254.169.254]/",
                &dev,
                Embedded("IPv4-compatible", LL),
            ),
            (
                "http://[::0.0.0.2]/",
                &dev,
                Embedded("IPv4-compatible", THISNET),
            ),
            (
                "http://[::ffff:0:127.0.0.1]/",
                &dev,
                Embedded("IPv4-translated", LOOP),
            ),
            // NAT64 (well-known prefix).
            (
                "http://[64:ff9b::127.0.0.1]/",
                &dev,
                Embedded("NAT64", LOOP),
            ),
            ("http://[64:ff9b::10.0.0.1]/", &dev, Embedded("NAT64", PRIV)),
            ("http://[64:ff9b::a9fe:a9fe]/", &dev, Embedded("NAT64", LL)),
            // 6to4: the IPv4 address is in bits 16..48.
            ("http://[2002:7f00:1::]/", &dev, Embedded("6to4", LOOP)),
            ("http://[2002:a00:1::1]/", &dev, Embedded("6to4", PRIV)),
            ("http://[2002:c0a8:101::]/", &dev, Embedded("6to4", PRIV)),
            ("http://[2002:a9fe:a9fe::]/", &dev, Embedded("6to4", LL)),
            // Public addresses, as IP literals (no lookups), pass.
            ("http://93.184.216.34/", &dev, Ok),
            ("https://93.184.216.34:8443/hook?x=1", &prod, Ok),
            ("http://8.8.8.8/", &dev, Ok),
            ("http://172.32.0.1/", &dev, Ok),
            ("http://172.15.255.255/", &dev, Ok),
            ("http://100.128.0.1/", &dev, Ok),
            ("http://[2606:2800:220:1::1]/", &dev, Ok),
            ("https://[2001:4860:4860::8888]/", &prod, Ok),
            ("http://[::ffff:93.184.216.34]/", &dev, Ok),
            ("http://[64:ff9b::808:808]/", &dev, Ok),
            ("http://[2002:5db8:d822::1]/", &dev, Ok),
            ("https://example.com/hooks", &prod, Ok),
            ("HTTPS://EXAMPLE.COM/", &prod, Ok),
            ("https://@example.com/", &prod, Ok),
            // Metadata host names, any case, trailing dot, subdomains.
            (
                "http://metadata.google.internal/computeMetadata/v1/",
                &dev,
                Meta,
            ),
            ("https://METADATA.GOOGLE.INTERNAL./", &prod, Meta),
            ("https://x.metadata.google.internal/", &prod, Meta),
            ("http://metadata.goog/", &dev, Meta),
            ("http://metadata/", &dev, Meta),
            ("http://instance-data/latest/", &dev, Meta),
            ("http://instance-data.ec2.internal/", &dev, Meta),
            ("https://metadata.tencentyun.com/", &prod, Meta),
            ("https://notmetadata.goog/", &prod, Ok),
            // https only in production.
            ("http://example.com/", &prod, Https),
            ("http://93.184.216.34/", &prod, Https),
            ("http://127.0.0.1/", &prod, Https),
            // Credentials in the URL.
            ("https://user:pw@example.com/", &prod, Creds),
            ("https://user@example.com/", &prod, Creds),
            ("https://:pw@example.com/", &prod, Creds),
            ("http://example.com@127.0.0.1/", &dev, Creds),
            // Only http and https.
            ("ftp://example.com/file", &dev, Scheme),
            ("file:///etc/passwd", &dev, Scheme),
            ("gopher://127.0.0.1:6379/_INFO", &dev, Scheme),
            ("dict://127.0.0.1:11211/", &dev, Scheme),
            ("ws://example.com/", &dev, Scheme),
            ("wss://example.com/", &prod, Scheme),
            ("javascript:alert(1)", &dev, Scheme),
            ("data:text/plain,hello", &dev, Scheme),
            // Not URLs, or unusable ones.
            ("", &dev, BadUrl),
            ("not a url", &dev, BadUrl),
            ("//example.com/", &dev, BadUrl),
            ("http://", &dev, BadUrl),
            ("http://[::1", &dev, BadUrl),
            ("http://256.0.0.1/", &dev, BadUrl),
            ("http://1.2.3.4.5/", &dev, BadUrl),
            ("http://example.com:65536/", &dev, BadUrl),
            ("http://example.com:0/", &dev, BadUrl),
            ("http://[fe80::1%25eth0]/", &dev, BadUrl),
        ];
        let mut failures = Vec::new();
        for (url, policy, want) in cases {
            let got = check_url(url, policy);
            if !matches(&got, want) {
                failures.push(format!("{url:?}: want {want:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn odd_ipv4_spellings_normalise_to_loopback() {
        let policy = allowing(true, &["127.0.0.0/8"]);
        for url in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://017700000001/",
        ] {
            let target = check_url(url, &policy).unwrap();
            assert_eq!(target.host, "127.0.0.1", "{url}");
            assert_eq!(target.url.as_str(), "http://127.0.0.1/", "{url}");
            let addrs = resolve_checked(&target, &policy).unwrap();
            assert_eq!(addrs, vec!["127.0.0.1:80".parse().unwrap()]);
        }
    }

    #[test]
    fn backslash_and_userinfo_tricks_parse_as_browsers_do() {
        let t = check_url("https://example.com\\@127.0.0.1/", &prod()).unwrap();
        assert_eq!(t.host, "example.com");
        assert_eq!(t.port, 443);
    }

    #[test]
    fn messages_say_why() {
        let e = check_url("http://127.0.0.1/", &dev()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "127.0.0.1 is blocked: loopback; if the receiver there is yours, allow it with \
             webhooks.allow = [\"127.0.0.1/32\"]"
        );
        let e = check_url("http://[::ffff:10.1.2.3]/", &dev()).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "::ffff:10.1.2.3 is blocked: private network (IPv4-mapped IPv6 address of 10.1.2.3)"
            ),
            "{e}"
        );
        let e = check_url("https://metadata.google.internal/", &prod()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "metadata.google.internal is blocked: cloud metadata service"
        );
        let e = check_url("https://u:secret@example.com/", &prod()).unwrap_err();
        assert!(!e.to_string().contains("secret"));
        let e = check_url("file:///etc/passwd", &dev()).unwrap_err();
        assert!(e.to_string().contains("\"file\""), "{e}");
        let e = check_url("http://example.com/", &prod()).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
    }

    #[test]
    fn allowlist_cidr_bypasses_address_checks_only() {
        let dev_allow = allowing(true, &["127.0.0.0/8", "::1/128"]);
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://127.0.0.2/",
            "http://2130706433/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(check_url(url, &dev_allow).is_ok(), "{url}");
        }
        // Other private ranges stay blocked; NAT64/6to4 are different destinations.
        for url in [
            "http://10.0.0.1/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[2002:7f00:1::]/",
        ] {
            assert!(
                matches!(check_url(url, &dev_allow), Err(SsrfError::Blocked { .. })),
                "{url}"
            );
        }
        // Never the scheme, https-only or credentials checks.
        assert_eq!(
            check_url("ftp://127.0.0.1/", &dev_allow),
            Err(SsrfError::Scheme("ftp".into()))
        );
        assert_eq!(
            check_url("file:///etc/passwd", &dev_allow),
            Err(SsrfError::Scheme("file".into()))
        );
        assert_eq!(
            check_url("http://u:p@127.0.0.1/", &dev_allow),
            Err(SsrfError::Credentials)
        );
        let prod_allow = allowing(false, &["127.0.0.0/8"]);
        assert_eq!(
            check_url("http://127.0.0.1/", &prod_allow),
            Err(SsrfError::HttpsRequired)
        );
        assert!(check_url("https://127.0.0.1/", &prod_allow).is_ok());
    }

    #[test]
    fn allowlist_host() {
        let policy = allowing(true, &["LocalHost", "Receiver.Test.", "metadata.goog"]);
        assert!(check_url("http://localhost:9000/", &policy).is_ok());
        assert!(check_url("http://receiver.test/", &policy).is_ok());
        assert!(check_url("http://RECEIVER.test./", &policy).is_ok());
        // An exact host rule also lifts the metadata-name check for that name only.
        assert!(check_url("http://metadata.goog/", &policy).is_ok());
        assert!(matches!(
            check_url("http://metadata.google.internal/", &policy),
            Err(SsrfError::MetadataHost(_))
        ));
        // A host rule does not allow an address.
        assert!(check_url("http://127.0.0.1/", &policy).is_err());
        assert!(check_url("http://other.receiver.test/", &policy).is_ok());
        assert!(!policy.allows_host("other.receiver.test"));
        assert_eq!(
            check_url("ftp://localhost/", &policy),
            Err(SsrfError::Scheme("ftp".into()))
        );
        assert_eq!(
            check_url("http://a:b@localhost/", &policy),
            Err(SsrfError::Credentials)
        );
    }

    #[test]
    fn localhost_resolves_to_loopback_and_is_refused_unless_allowlisted() {
        let target = check_url("http://localhost:8080/hook", &dev()).unwrap();
        assert_eq!((target.host.as_str(), target.port), ("localhost", 8080));
        match resolve_checked(&target, &dev()) {
            Err(SsrfError::Blocked { addr, reason, .. }) => {
                assert!(addr.is_loopback(), "{addr}");
                assert_eq!(reason, "loopback");
            }
            other => panic!("localhost was not refused: {other:?}"),
        }

        for policy in [
            allowing(true, &["localhost"]),
            allowing(true, &["127.0.0.0/8", "::1/128"]),
        ] {
            let target = check_url("http://localhost:8080/hook", &policy).unwrap();
            let addrs = resolve_checked(&target, &policy).unwrap();
            assert!(!addrs.is_empty());
            for addr in addrs {
                assert!(addr.ip().is_loopback(), "{addr}");
                assert_eq!(addr.port(), 8080);
            }
        }
    }

    #[test]
    fn resolve_checks_literals_without_dns() {
        let policy = dev();
        let target = check_url("http://[2606:2800:220:1::1]:8443/", &policy).unwrap();
        assert_eq!(
            resolve_checked(&target, &policy).unwrap(),
            vec!["[2606:2800:220:1::1]:8443".parse().unwrap()]
        );
        // A hand-made target is still checked.
        let forged = Target {
            url: url::Url::parse("http://127.0.0.1/").unwrap(),
            host: "127.0.0.1".into(),
            port: 80,
        };
        assert!(matches!(
            resolve_checked(&forged, &policy),
            Err(SsrfError::Blocked { .. })
        ));
        let forged = Target {
            host: "[::1]".into(),
            ..forged
        };
        assert!(matches!(
            resolve_checked(&forged, &policy),
            Err(SsrfError::Blocked { .. })
        ));
        // The system resolver's own numeric spellings are caught after resolution.
        let forged = Target {
            host: "0x7f.1".into(),
            ..forged
        };
        assert!(resolve_checked(&forged, &policy).is_err());
        let forged = Target {
            host: "metadata.google.internal".into(),
            ..forged
        };
        assert!(matches!(
            resolve_checked(&forged, &policy),
            Err(SsrfError::MetadataHost(_))
        ));
    }

    #[actix_rt::test]
    async fn resolve_async() {
        let policy = allowing(true, &["127.0.0.0/8", "::1/128"]);
        let target = check_url("http://localhost:1/", &policy).unwrap();
        let addrs = resolve_checked_async(&target, &policy).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
        assert!(matches!(
            resolve_checked_async(&target, &dev()).await,
            Err(SsrfError::Blocked { .. })
        ));
    }

    #[test]
    fn allow_rules_parse_with_clear_errors() {
        let ok: &[(&str, &str)] = &[
            ("127.0.0.0/8", "127.0.0.0/8"),
            (" ::1/128 ", "::1/128"),
            ("fc00::/7", "fc00::/7"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("::1", "::1/128"),
            ("[::1]", "::1/128"),
            ("2130706433", "127.0.0.1/32"),
            ("LocalHost", "localhost"),
            ("receiver.test.", "receiver.test"),
            ("bücher.example", "xn--bcher-kva.example"),
        ];
        for (input, shown) in ok {
            let rule: AllowRule = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(rule.to_string(), *shown, "{input}");
            assert_eq!(rule.to_string().parse::<AllowRule>().unwrap(), rule);
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            (
                "127.0.0.1/8",
                "host bits are set; did you mean 127.0.0.0/8?",
            ),
            ("10.0.0.0/33", "longer than 32 bits"),
            ("::/129", "longer than 128 bits"),
            ("abc/8", "not an IPv4 or IPv6 address"),
            ("1.2.3.4/", "not a prefix length"),
            ("1.2.3.4/-1", "not a prefix length"),
            ("*.example.com", "wildcards"),
            ("http://localhost", "looks like a URL"),
            ("localhost:8080", "ports are not part"),
            ("foo bar", "not a valid host name"),
            ("a..b", "not a valid host name"),
            ("256.0.0.1", "not a valid host name"),
        ];
        for (input, reason) in bad {
            let err = input.parse::<AllowRule>().unwrap_err();
            assert!(
                err.to_string().contains(reason),
                "{input:?}: {err} (want {reason:?})"
            );
            assert!(err.to_string().starts_with("invalid SSRF allowlist rule"));
        }
    }

    #[test]
    fn policy_from_toml() {
        let policy: SsrfPolicy = toml::from_str(
            "allow_http = true\nallow = [\"127.0.0.0/8\", \"::1/128\", \"localhost\"]",
        )
        .unwrap();
        assert!(policy.allow_http);
        assert_eq!(policy.allow.len(), 3);
        assert!(policy.allows_ip("127.0.0.1".parse().unwrap()));
        assert!(policy.allows_host("LOCALHOST."));
        let strict: SsrfPolicy = toml::from_str("").unwrap();
        assert_eq!(strict, SsrfPolicy::default());
        assert!(!strict.allow_http);
        let err = toml::from_str::<SsrfPolicy>("allow = [\"127.0.0.1/8\"]").unwrap_err();
        assert!(
            err.to_string().contains("did you mean 127.0.0.0/8"),
            "{err}"
        );
        let text = toml::to_string(&policy).unwrap();
        assert_eq!(toml::from_str::<SsrfPolicy>(&text).unwrap(), policy);
    }

    #[test]
    fn cidr_contains() {
        let net: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(net.contains("172.31.255.255".parse().unwrap()));
        assert!(!net.contains("172.32.0.0".parse().unwrap()));
        assert!(!net.contains("::ffff:172.16.0.1".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("ffff::1".parse().unwrap()));
        assert!(!all.contains("1.2.3.4".parse().unwrap()));
        assert_eq!(net.prefix(), 12);
        assert_eq!(net.addr(), "172.16.0.0".parse::<IpAddr>().unwrap());
    }

    /// A small deterministic generator (xorshift64*), so the fuzz tests need no crate.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    #[test]
    fn generated_urls_never_panic_and_oks_are_sound() {
        let mut g = Gen(0x5eed_1234_abcd_9876);
        let schemes = [
            "http",
            "https",
            "HTTP",
            "ftp",
            "file",
            "gopher",
            "",
            "javascript",
            "hTTps",
            "ws",
        ];
        let seps = ["://", ":/", ":", "//", ":\\\\", ":///", "://\t"];
        let users = ["", "", "", "u@", "u:p@", ":@", "@", "a%40b@", "x:y:z@"];
        let hosts = [
            "127.0.0.1",
            "2130706433",
            "0x7f.1",
            "017700000001",
            "0",
            "localhost",
            "example.com",
            "metadata.google.internal",
            "[::1]",
            "[::ffff:10.0.0.1]",
            "[64:ff9b::a00:1]",
            "[2002:7f00:1::]",
            "[fe80::1%25lo]",
            "93.184.216.34",
            "[2606:2800:220:1::1]",
            "1.2.3.4.5",
            "999.1.1.1",
            "0x100000000",
            "%31%32%37.0.0.1",
            "exa mple.com",
            "bücher.example",
            "xn--",
            "[",
            "]",
            "..",
            ".",
            "\u{ff10}x7f.1",
            "①②⑦.0.0.1",
        ];
        let ports = [
            "", "", ":", ":0", ":80", ":65535", ":65536", ":-1", ":abc", ":8080",
        ];
        let tails = [
            "",
            "/",
            "/path?q=1#f",
            "\\@127.0.0.1",
            "#@evil",
            "?@x",
            "/%2e%2e/",
        ];
        let alphabet: Vec<char> = "abcxyz0129:/@[].%#?\\ \t\n-_~x\u{3002}\u{ff0e}ü"
            .chars()
            .collect();
        let policies = [dev(), prod(), allowing(true, &["127.0.0.0/8", "localhost"])];

        for i in 0..6000 {
            let url = if i % 3 == 0 {
                let len = g.below(40);
                (0..len)
                    .map(|_| alphabet[g.below(alphabet.len())])
                    .collect()
            } else {
                let mut host = g.pick(&hosts).to_owned();
                if g.below(4) == 0 {
                    host = format!("{}.{}", g.next() % 300, g.next() as u32);
                }
                format!(
                    "{}{}{}{}{}{}",
                    g.pick(&schemes),
                    g.pick(&seps),
                    g.pick(&users),
                    host,
                    g.pick(&ports),
                    g.pick(&tails)
                )
            };
            let policy = &policies[g.below(policies.len())];
            let _ = url.parse::<AllowRule>();
            if let Result::Ok(t) = check_url(&url, policy) {
                let scheme = t.url.scheme();
                assert!(
                    scheme == "https" || (scheme == "http" && policy.allow_http),
                    "{url:?}"
                );
                assert!(t.url.username().is_empty() && t.url.password().is_none());
                assert!(t.port != 0);
                if let Result::Ok(ip) = t.host.parse::<IpAddr>() {
                    assert!(check_ip(ip, policy).is_ok(), "{url:?}");
                } else {
                    assert!(!is_metadata_host(&t.host) || policy.allows_host(&t.host));
                }
            }
        }
    }

    #[test]
    fn embedded_forms_agree_with_ipv4() {
        let mut g = Gen(0x0dd_ba11);
        let policy = dev();
        for i in 0..20_000u32 {
            // Mix random addresses with every /8 boundary so all ranges are hit.
            let bits = if i < 256 { i << 24 } else { g.next() as u32 };
            let ip = Ipv4Addr::from_bits(bits);
            let want = check_ip(IpAddr::V4(ip), &policy).is_ok();
            let forms = [
                ip.to_ipv6_mapped(),
                Ipv6Addr::from_bits(u128::from(bits)),
                Ipv6Addr::from_bits(v6(0, 0, 0, 0, 0xffff, 0, 0, 0) | u128::from(bits)),
                Ipv6Addr::from_bits(v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0) | u128::from(bits)),
                Ipv6Addr::from_bits(v6(0x2002, 0, 0, 0, 0, 0, 0, 0) | (u128::from(bits) << 80)),
            ];
            for v6 in forms {
                assert_eq!(
                    check_ip(IpAddr::V6(v6), &policy).is_ok(),
                    want,
                    "{ip} as {v6}"
                );
            }
        }
    }
}
