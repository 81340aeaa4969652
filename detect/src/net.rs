//! IP addresses as the detectors compare them: CIDR membership for trusted networks, and
//! origins (an address, its /24 or /64, or an opaque pseudonym) without allocating.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    prefix: u8,
    v4: bool,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x:y::/n` (a bare address is a single-host block).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let ip: IpAddr = addr.trim().parse().ok()?;
        let (bits, width, v4) = ip_bits(ip);
        let prefix = prefix.unwrap_or(width);
        if prefix > width {
            return None;
        }
        Some(Cidr {
            net: mask(bits, prefix, width),
            prefix,
            v4,
        })
    }

    /// Whether `ip` lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, width, v4) = ip_bits(ip);
        v4 == self.v4 && mask(bits, self.prefix, width) == self.net
    }
}

fn ip_bits(ip: IpAddr) -> (u128, u8, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32, true),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => (u128::from(u32::from(m)), 32, true),
            None => (u128::from(a), 128, false),
        },
    }
}

fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(width - prefix);
    (bits >> shift) << shift
}

/// Where a token was used from, as compared for equality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Origin {
    /// A readable address (masked to its /24 or /64 when subnets count as one origin).
    Ip {
        /// The (masked) address bits.
        bits: u128,
        /// IPv4.
        v4: bool,
    },
    /// A pseudonymized or unparsable address: a 128-bit hash of the stored string.
    Opaque(u128),
}

impl Origin {
    /// The origin of a stored `source_ip` (empty: none).
    pub fn of(stored: &str, same_subnet: bool) -> Option<Origin> {
        Origin::parse(stored, same_subnet, &[]).0
    }

    /// The origin of a stored `source_ip`, and whether a readable address lies in one of
    /// `nets` (`None` for a pseudonym or nothing): one parse for both.
    pub fn parse(stored: &str, same_subnet: bool, nets: &[Cidr]) -> (Option<Origin>, Option<bool>) {
        if stored.is_empty() {
            return (None, None);
        }
        match stored.parse::<IpAddr>() {
            Ok(ip) => {
                let trusted = nets.iter().any(|n| n.contains(ip));
                let (bits, width, v4) = ip_bits(ip);
                let prefix = match (same_subnet, v4) {
                    (false, _) => width,
                    (true, true) => 24,
                    (true, false) => 64,
                };
                let origin = Origin::Ip {
                    bits: mask(bits, prefix, width),
                    v4,
                };
                (Some(origin), Some(trusted))
            }
            Err(_) => (Some(Origin::Opaque(crate::key::key(&[stored]))), None),
        }
    }
}

/// Whether a readable address lies in any of `nets` (`None` for a pseudonym).
pub fn trusted(stored: &str, nets: &[Cidr]) -> Option<bool> {
    let ip: IpAddr = stored.parse().ok()?;
    Some(nets.iter().any(|n| n.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_membership() {
        let c = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(c.contains("10.20.3.4".parse().expect("ip")));
        assert!(!c.contains("11.0.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.1.1".parse().expect("ip")));
        let v6 = Cidr::parse("fd00::/8").expect("cidr");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nonsense").is_none());
    }

    #[test]
    fn origins_group_subnets_when_asked() {
        let a = Origin::of("192.0.2.10", true);
        assert_eq!(a, Origin::of("192.0.2.200", true));
        assert_ne!(a, Origin::of("192.0.3.10", true));
        assert_ne!(
            Origin::of("192.0.2.10", false),
            Origin::of("192.0.2.11", false)
        );
        assert_eq!(
            Origin::of("2001:db8:1:2::1", true),
            Origin::of("2001:db8:1:2:ffff::9", true)
        );
        assert_eq!(
            Origin::of("ps1.k1.abc", true),
            Origin::of("ps1.k1.abc", true)
        );
        assert_ne!(
            Origin::of("ps1.k1.abc", true),
            Origin::of("ps1.k1.abd", true)
        );
        assert_eq!(Origin::of("", true), None);
    }
}
