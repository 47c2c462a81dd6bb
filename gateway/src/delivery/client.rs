//! The outbound HTTP clients: one connection pool for every endpoint (keep-alive reuse), no
//! redirects, and a guard that refuses non-public destination addresses unless the config allows them.
//! Deliveries use a bare hyper client (the hot path: a pre-parsed URI per endpoint, no extra layers)
//! with the guard in its resolver; alerts use reqwest, unguarded (see [`build_alerts`]).
//!
//! The guard runs after DNS resolution (a custom resolver drops refused addresses), and again for
//! URLs whose host is an IP literal, which never reach the resolver. Non-public addresses inside a
//! CIDR of `security.allowed_destinations` pass (e.g. an internal subscriber at `10.1.0.0/16`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name as HyperName;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;

use url::Url;

/// The `user-agent` of every delivery.
pub const USER_AGENT: &str = concat!("Sluice/", env!("CARGO_PKG_VERSION"));

/// Builds the client for admin alerts. `alerts.url` is the operator's own infrastructure, often
/// internal, so this client has no destination guard; it does not follow redirects either.
pub fn build_alerts() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()
}

/// The delivery client: hyper over TCP or TLS (webpki roots), the guard in its resolver.
pub type DeliveryClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// Which destination addresses deliveries may reach.
#[derive(Debug, Clone, Default)]
pub struct DestinationGuard {
    /// Every address may be reached (`security.allow_private_destinations`).
    pub allow_private: bool,
    /// Non-public networks that may be reached anyway (`security.allowed_destinations`).
    pub allowed: Vec<IpNet>,
}

impl From<&crate::config::SecurityConfig> for DestinationGuard {
    /// The guard `[security]` describes.
    fn from(security: &crate::config::SecurityConfig) -> Self {
        Self { allow_private: security.allow_private_destinations, allowed: security.allowed_destinations.clone() }
    }
}

impl DestinationGuard {
    /// Whether `ip` may be contacted: public, inside an allowed network, or everything is allowed.
    /// IPv4-mapped IPv6 addresses are also matched against the IPv4 networks.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow_private || is_public(ip) {
            return true;
        }
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)))
    }

    /// Why a URL whose host is an IP literal is refused, or `None` when it may be contacted (or its
    /// host is a name, which the resolver checks).
    pub fn refuse_literal(&self, url: &Url) -> Option<String> {
        let ip = match url.host()? {
            url::Host::Ipv4(ip) => IpAddr::V4(ip),
            url::Host::Ipv6(ip) => IpAddr::V6(ip),
            url::Host::Domain(_) => return None,
        };
        (!self.permits(ip)).then(|| refused_message(ip))
    }
}

/// Builds the delivery client.
pub fn build_delivery(guard: DestinationGuard) -> DeliveryClient {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { guard: Arc::new(guard) });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https)
}

fn refused_message(ip: IpAddr) -> String {
    format!(
        "destination address {ip} is not public; add its network to security.allowed_destinations \
         (or set security.allow_private_destinations) to allow it"
    )
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local, CGNAT, multicast,
/// documentation, benchmarking, IETF-reserved, unspecified or broadcast), looking through the IPv6
/// forms that embed an IPv4 address (IPv4-mapped, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                // 192.0.0.0/24: IETF protocol assignments; 198.18.0.0/15: benchmarking.
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded =
                |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
            // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // ::a.b.c.d, IPv4-compatible (deprecated): never a real destination.
                || s[..6] == [0; 6]
                // 64:ff9b:1::/48: NAT64 for local use.
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // fec0::/10: site-local (deprecated, still routed inside some networks).
                || (s[0] & 0xffc0) == 0xfec0
                || s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// Resolves names and drops the addresses the guard refuses; fails when none is left.
#[derive(Clone)]
pub struct GuardedResolver {
    guard: Arc<DestinationGuard>,
}

impl GuardedResolver {
    async fn lookup(host: String, guard: &DestinationGuard) -> std::io::Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| guard.permits(a.ip())).collect();
        if allowed.is_empty() {
            let reason = match found.first() {
                Some(addr) => format!("{host} resolves to {}", refused_message(addr.ip())),
                None => format!("{host} resolves to no address"),
            };
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason));
        }
        Ok(allowed)
    }
}

impl tower_service::Service<HyperName> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: HyperName) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move { Ok(Self::lookup(name.as_str().to_string(), &guard).await?.into_iter()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} should not be public");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn nat64_addresses_follow_the_ipv4_address_they_embed() {
        assert!(!is_public("64:ff9b::7f00:1".parse().unwrap()), "NAT64 of 127.0.0.1");
        assert!(!is_public("64:ff9b::a00:1".parse().unwrap()), "NAT64 of 10.0.0.1");
        assert!(is_public("64:ff9b::101:101".parse().unwrap()), "NAT64 of 1.1.1.1");
        assert!(!is_public("64:ff9b:1::101:101".parse().unwrap()), "local-use NAT64");
    }

    #[test]
    fn sixtofour_addresses_follow_the_ipv4_address_they_embed() {
        assert!(!is_public("2002:c0a8:101::1".parse().unwrap()), "6to4 of 192.168.1.1");
        assert!(!is_public("2002:7f00:1::".parse().unwrap()), "6to4 of 127.0.0.1");
        assert!(is_public("2002:808:808::1".parse().unwrap()), "6to4 of 8.8.8.8");
    }

    #[test]
    fn ipv4_compatible_addresses_are_refused() {
        assert!(!is_public("::127.0.0.1".parse().unwrap()));
        assert!(!is_public("::8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn site_local_addresses_are_refused() {
        assert!(!is_public("fec0::1".parse().unwrap()));
        assert!(!is_public("feff::1".parse().unwrap()));
    }

    #[test]
    fn benchmarking_addresses_are_refused() {
        assert!(!is_public("198.18.0.1".parse().unwrap()));
        assert!(!is_public("198.19.255.254".parse().unwrap()));
        assert!(is_public("198.20.0.1".parse().unwrap()));
    }

    #[test]
    fn ietf_protocol_assignments_are_refused() {
        assert!(!is_public("192.0.0.8".parse().unwrap()));
        assert!(is_public("192.0.1.1".parse().unwrap()));
    }

    #[test]
    fn literal_hosts_are_checked_unless_allowed() {
        let url = Url::parse("http://127.0.0.1:9/hook").unwrap();
        let strict = DestinationGuard::default();
        assert!(strict.refuse_literal(&url).is_some());
        assert!(DestinationGuard { allow_private: true, allowed: vec![] }.refuse_literal(&url).is_none());
        assert!(strict.refuse_literal(&Url::parse("http://example.com/").unwrap()).is_none());
    }

    #[test]
    fn allowed_networks_let_non_public_addresses_through() {
        let guard = DestinationGuard {
            allow_private: false,
            allowed: vec!["10.1.0.0/16".parse().unwrap(), "fd12::/16".parse().unwrap()],
        };
        for ip in ["10.1.2.3", "::ffff:10.1.9.9", "fd12::7", "8.8.8.8"] {
            assert!(guard.permits(ip.parse().unwrap()), "{ip} should be permitted");
        }
        for ip in ["10.2.0.1", "127.0.0.1", "::ffff:127.0.0.1", "fd13::1", "169.254.169.254", "::1"] {
            assert!(!guard.permits(ip.parse().unwrap()), "{ip} should be refused");
        }
    }
}
