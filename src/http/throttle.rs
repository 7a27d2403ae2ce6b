//! Wrong admin keys, throttled per client address.
//!
//! Each address may send `auth.wrong_key_burst` wrong keys in a row, then one more every
//! `60 / auth.wrong_keys_per_minute` seconds. While an address is held back, every admin request
//! from it is answered 429 with `Retry-After` before its key is even compared: a right key
//! guessed during the wait would otherwise show itself by not being refused, and the throttle
//! would slow nothing. A right key from any other address is unaffected.
//!
//! The rule is the generic cell rate algorithm (GCRA), one instant per address: the moment its
//! debt of wrong keys will have been paid off. The `governor` crate implements the same
//! algorithm, but it can only spend an attempt, not ask whether an address is held back without
//! spending one, which is the question every request asks first. The instants live in a moka
//! cache, so an attacker with many addresses fills a bounded table, and an address that stops
//! guessing is forgotten once its debt is paid.
//!
//! The client address is the connection's peer, unless the peer is one of
//! `server.trusted_proxies`: then `X-Forwarded-For` is read from the right, past every trusted
//! proxy, and the first other address is the client. Addresses left of it were written by the
//! client and could be anything. IPv6 clients are counted per /64, the block one subscriber is
//! usually given.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnet::IpNet;

/// Addresses remembered at once; an address past this evicts the least recently seen.
const MAX_ADDRESSES: u64 = 65_536;

pub struct KeyThrottle {
    /// Wrong keys an address may send in a row; 0: no throttle.
    burst: u32,
    /// One more wrong key is allowed per interval, once the burst is spent.
    interval: Duration,
    /// Per address, when its debt of wrong keys is paid off (GCRA's theoretical arrival time).
    paid_off: moka::sync::Cache<IpAddr, Arc<Mutex<Instant>>>,
    proxies: Vec<IpNet>,
}

impl KeyThrottle {
    pub fn new(burst: u32, per_minute: u32, proxies: Vec<IpNet>) -> KeyThrottle {
        let interval = Duration::from_secs(60) / per_minute.max(1);
        KeyThrottle {
            burst,
            interval,
            paid_off: moka::sync::Cache::builder()
                .max_capacity(MAX_ADDRESSES)
                // Idle this long, an address's debt is paid whatever it was.
                .time_to_idle(interval * burst.max(1))
                .build(),
            proxies,
        }
    }

    /// How long `client` must wait before its key is looked at again; None: not held back.
    pub fn wait(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        if self.burst == 0 {
            return None;
        }
        let paid_off = *self.paid_off.get(&client)?.lock().expect("unpoisoned");
        let allowance = self.interval * (self.burst - 1);
        paid_off
            .checked_duration_since(now)
            .and_then(|debt| debt.checked_sub(allowance))
            .filter(|wait| !wait.is_zero())
    }

    /// Counts a wrong key from `client`.
    pub fn wrong_key(&self, client: IpAddr, now: Instant) {
        if self.burst == 0 {
            return;
        }
        let cell = self.paid_off.get_with(client, || Arc::new(Mutex::new(now)));
        let mut paid_off = cell.lock().expect("unpoisoned");
        *paid_off = (*paid_off).max(now) + self.interval;
    }

    /// The address a request counts against: `peer`, or what a trusted proxy says in
    /// `X-Forwarded-For` (`forwarded`, every such header joined by commas).
    pub fn client(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        let mut client = peer.to_canonical();
        if let Some(list) = forwarded {
            for hop in list.rsplit(',') {
                if !self.trusted(client) {
                    break;
                }
                match hop.trim().parse::<IpAddr>() {
                    Ok(addr) => client = addr.to_canonical(),
                    // Our proxy writes an address; anything else came from further left.
                    Err(_) => break,
                }
            }
        }
        counted(client)
    }

    fn trusted(&self, addr: IpAddr) -> bool {
        self.proxies.iter().any(|net| net.contains(&addr))
    }
}

/// The unit an address is counted in: itself for IPv4, its /64 for IPv6.
fn counted(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn throttle(burst: u32, per_minute: u32) -> KeyThrottle {
        KeyThrottle::new(burst, per_minute, Vec::new())
    }

    #[test]
    fn the_burst_is_allowed_then_one_key_per_interval() {
        let t = throttle(3, 6); // one every 10 s
        let a = ip("203.0.113.5");
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.wait(a, start), None);
            t.wrong_key(a, start);
        }
        assert_eq!(t.wait(a, start), Some(Duration::from_secs(10)));
        let later = start + Duration::from_secs(4);
        assert_eq!(t.wait(a, later), Some(Duration::from_secs(6)));
        // Paid off for one more attempt, exactly at the interval and after it.
        let next = start + Duration::from_secs(10);
        assert_eq!(t.wait(a, next), None);
        t.wrong_key(a, next);
        assert_eq!(t.wait(a, next), Some(Duration::from_secs(10)));
        // Quiet for the whole burst's worth: the burst is back.
        let rested = next + Duration::from_secs(30);
        for _ in 0..3 {
            assert_eq!(t.wait(a, rested), None);
            t.wrong_key(a, rested);
        }
        assert!(t.wait(a, rested).is_some());
    }

    #[test]
    fn a_burst_of_one_holds_back_after_the_first_wrong_key() {
        let t = throttle(1, 60);
        let a = ip("192.0.2.1");
        let now = Instant::now();
        assert_eq!(t.wait(a, now), None);
        t.wrong_key(a, now);
        assert_eq!(t.wait(a, now), Some(Duration::from_secs(1)));
        assert_eq!(
            t.wait(a, now + Duration::from_millis(999)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(t.wait(a, now + Duration::from_secs(1)), None);
    }

    #[test]
    fn addresses_are_counted_apart_and_zero_turns_the_throttle_off() {
        let t = throttle(2, 1);
        let now = Instant::now();
        t.wrong_key(ip("192.0.2.1"), now);
        t.wrong_key(ip("192.0.2.1"), now);
        assert!(t.wait(ip("192.0.2.1"), now).is_some());
        assert_eq!(t.wait(ip("192.0.2.2"), now), None);

        let off = throttle(0, 1);
        for _ in 0..100 {
            off.wrong_key(ip("192.0.2.1"), now);
        }
        assert_eq!(off.wait(ip("192.0.2.1"), now), None);
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let t = throttle(1, 1);
        assert_eq!(
            t.client(ip("2001:db8:1:2:aaaa::1"), None),
            ip("2001:db8:1:2::")
        );
        assert_eq!(t.client(ip("::ffff:192.0.2.7"), None), ip("192.0.2.7"));
        let now = Instant::now();
        t.wrong_key(t.client(ip("2001:db8:1:2::1"), None), now);
        assert!(
            t.wait(t.client(ip("2001:db8:1:2::ffff"), None), now)
                .is_some()
        );
        assert_eq!(t.wait(t.client(ip("2001:db8:1:3::1"), None), now), None);
    }

    #[test]
    fn the_forwarded_address_is_believed_only_from_a_trusted_proxy() {
        let nets = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.9/32".parse().unwrap(),
        ];
        let t = KeyThrottle::new(1, 1, nets);
        let xff = Some("198.51.100.1, 203.0.113.5");
        // An untrusted peer's header is ignored.
        assert_eq!(t.client(ip("192.0.2.1"), xff), ip("192.0.2.1"));
        // A trusted peer: the rightmost address it did not itself trust.
        assert_eq!(t.client(ip("10.1.2.3"), xff), ip("203.0.113.5"));
        assert_eq!(t.client(ip("192.0.2.9"), xff), ip("203.0.113.5"));
        // Two trusted proxies in a row.
        assert_eq!(
            t.client(ip("10.0.0.1"), Some("198.51.100.1, 203.0.113.5, 10.0.0.2")),
            ip("203.0.113.5")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            t.client(ip("10.0.0.1"), Some("10.0.0.7,10.0.0.2")),
            ip("10.0.0.7")
        );
        // Nothing forwarded, or nothing readable where our proxy writes: the proxy itself.
        assert_eq!(t.client(ip("10.0.0.1"), None), ip("10.0.0.1"));
        assert_eq!(t.client(ip("10.0.0.1"), Some("unknown")), ip("10.0.0.1"));
        assert_eq!(
            t.client(ip("10.0.0.1"), Some("203.0.113.5, junk")),
            ip("10.0.0.1")
        );
        assert_eq!(
            t.client(ip("10.0.0.1"), Some(" 2001:db8::1 ")),
            ip("2001:db8::")
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(12)), 12);
        assert_eq!(retry_after_secs(Duration::from_millis(12_001)), 13);
        assert_eq!(retry_after_secs(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
