//! Which interfaces route the metadata endpoints, read from the kernel's
//! `/proc/net/route` and `/proc/net/ipv6_route` of the current network
//! namespace (the observer ships without `ip`, so no shelling out).
//!
//! What this sees, and what it does not:
//! - `/proc/net/route` lists the IPv4 main table only; `/proc/net/ipv6_route`
//!   lists every IPv6 table (main, local, custom). Policy routing (`ip rule`)
//!   is not evaluated: the lookup is a longest-prefix match over what the
//!   files list, lowest metric first among equal prefixes.
//! - Routes whose flags lack `RTF_UP` or carry `RTF_REJECT` (unreachable,
//!   prohibit, and for IPv6 also blackhole/throw, plus the `lo` null entries
//!   of every table) are skipped: the match falls back to a shorter prefix.
//!   That errs toward attaching to one interface too many rather than none.
//! - IPv4 blackhole routes have no device (`*`) and are skipped too.
//! - IPv6 local/anycast entries (`RTF_LOCAL`/`RTF_ANYCAST`) mean local delivery:
//!   they resolve to `lo` whatever device they name.
//! - IPv6 source-specific routes (source prefix length ≠ 0) are ignored.
//! - Equal-best routes on several devices (IPv6 multipath, or link-local
//!   `fe80::/64` on every interface) all count as uplinks.
//! - IPv4-mapped IPv6 endpoints (`::ffff:a.b.c.d`) are routed as IPv4.

use std::{
    collections::BTreeSet,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

/// Route is usable.
pub const RTF_UP: u32 = 0x0001;
#[cfg(test)]
/// Route goes through a gateway.
pub const RTF_GATEWAY: u32 = 0x0002;
#[cfg(test)]
/// Host route (IPv4 /32).
pub const RTF_HOST: u32 = 0x0004;
/// Unreachable/prohibit (IPv6 also blackhole/throw): traffic is refused.
pub const RTF_REJECT: u32 = 0x0200;
/// IPv6: anycast address of this host (local delivery).
pub const RTF_ANYCAST: u32 = 0x0010_0000;
/// IPv6: address of this host (local delivery).
pub const RTF_LOCAL: u32 = 0x8000_0000;

/// One line of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    /// Device name; `*` for routes without one (unreachable, blackhole).
    pub iface: String,
    pub destination: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub flags: u32,
    pub metric: u32,
}

impl Route4 {
    pub fn prefix_len(&self) -> u8 {
        u32::from(self.mask).count_ones() as u8
    }

    pub fn contains(&self, dst: Ipv4Addr) -> bool {
        let m = u32::from(self.mask);
        u32::from(dst) & m == u32::from(self.destination) & m
    }

    /// Up, not a reject route, and has a device.
    pub fn is_usable(&self) -> bool {
        self.flags & RTF_UP != 0 && self.flags & RTF_REJECT == 0 && self.iface != "*"
    }
}

/// One line of `/proc/net/ipv6_route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    pub iface: String,
    pub destination: Ipv6Addr,
    pub prefix_len: u8,
    pub source: Ipv6Addr,
    pub source_prefix_len: u8,
    pub next_hop: Ipv6Addr,
    pub metric: u32,
    pub flags: u32,
}

impl Route6 {
    pub fn contains(&self, dst: Ipv6Addr) -> bool {
        let m = mask128(self.prefix_len);
        u128::from(dst) & m == u128::from(self.destination) & m
    }

    /// Up, not a reject route (which includes the `lo` null entries), and not
    /// source-specific.
    pub fn is_usable(&self) -> bool {
        self.flags & RTF_UP != 0 && self.flags & RTF_REJECT == 0 && self.source_prefix_len == 0
    }

    /// The device traffic matching this route leaves by: `lo` for the
    /// host's own (local or anycast) addresses.
    pub fn egress_iface(&self) -> &str {
        if self.flags & (RTF_LOCAL | RTF_ANYCAST) != 0 { "lo" } else { &self.iface }
    }
}

fn mask128(prefix_len: u8) -> u128 {
    match prefix_len {
        0 => 0,
        n => u128::MAX << (128 - u32::from(n.min(128))),
    }
}

/// Parse `/proc/net/route`. The kernel prints addresses as the native-endian
/// value of the network-order word (so "0100A8C0" is 192.168.0.1 on
/// little-endian hosts); flags and mask in hex, metric in decimal. The header
/// and malformed lines are skipped.
pub fn parse_ipv4_routes(text: &str) -> Vec<Route4> {
    parse_ipv4_routes_endian(text, cfg!(target_endian = "little"))
}

fn parse_ipv4_routes_endian(text: &str, little_endian: bool) -> Vec<Route4> {
    let addr = |s: &str| -> Option<Ipv4Addr> {
        let v = u32::from_str_radix(s, 16).ok()?;
        Some(Ipv4Addr::from(if little_endian { v.to_le_bytes() } else { v.to_be_bytes() }))
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask [MTU Window IRTT]
        if f.len() < 8 || f[0] == "Iface" {
            continue;
        }
        let parsed = (|| {
            Some(Route4 {
                iface: f[0].to_string(),
                destination: addr(f[1])?,
                gateway: addr(f[2])?,
                flags: u32::from_str_radix(f[3], 16).ok()?,
                // Printed with %d from an unsigned priority.
                metric: f[6].parse::<i64>().ok()? as u32,
                mask: addr(f[7])?,
            })
        })();
        if let Some(r) = parsed {
            out.push(r);
        }
    }
    out
}

/// Parse `/proc/net/ipv6_route`: destination (32 hex digits, network order),
/// prefix length (hex), source, source prefix length, next hop, metric,
/// refcount, use, flags (all hex) and the device, last. Malformed lines are
/// skipped.
pub fn parse_ipv6_routes(text: &str) -> Vec<Route6> {
    let addr = |s: &str| -> Option<Ipv6Addr> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(Ipv6Addr::from)
    };
    let plen = |s: &str| -> Option<u8> { u8::from_str_radix(s, 16).ok().filter(|&n| n <= 128) };
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let parsed = (|| {
            Some(Route6 {
                destination: addr(f[0])?,
                prefix_len: plen(f[1])?,
                source: addr(f[2])?,
                source_prefix_len: plen(f[3])?,
                next_hop: addr(f[4])?,
                metric: hex(f[5])?,
                flags: hex(f[8])?,
                iface: f[9].to_string(),
            })
        })();
        if let Some(r) = parsed {
            out.push(r);
        }
    }
    out
}

/// All devices of the equal-best routes: longest prefix, then lowest metric.
/// In table order, deduplicated.
fn best<'a, R>(
    routes: &'a [R],
    matches: impl Fn(&R) -> bool,
    key: impl Fn(&R) -> (u8, u32),
    iface: impl Fn(&'a R) -> &'a str,
) -> Vec<String> {
    let mut best_key: Option<(u8, u32)> = None;
    let mut out: Vec<String> = Vec::new();
    for r in routes.iter().filter(|r| matches(r)) {
        let (plen, metric) = key(r);
        let better = match best_key {
            None => true,
            Some((bp, bm)) => plen > bp || (plen == bp && metric < bm),
        };
        let tie = best_key == Some((plen, metric));
        if better {
            best_key = Some((plen, metric));
            out.clear();
        }
        if (better || tie) && !out.iter().any(|i| i == iface(r)) {
            out.push(iface(r).to_string());
        }
    }
    out
}

/// Every device of the equal-best IPv4 routes to `dst` (usually one).
pub fn route_ifaces_v4(routes: &[Route4], dst: Ipv4Addr) -> Vec<String> {
    best(routes, |r| r.is_usable() && r.contains(dst), |r| (r.prefix_len(), r.metric), |r| r.iface.as_str())
}

#[cfg(test)]
/// The device of the longest-prefix, lowest-metric usable IPv4 route to
/// `dst` (the first in table order on a tie).
pub fn route_iface_v4(routes: &[Route4], dst: Ipv4Addr) -> Option<String> {
    route_ifaces_v4(routes, dst).into_iter().next()
}

/// Every device of the equal-best IPv6 routes to `dst` (multipath siblings,
/// or every interface for a link-local destination).
pub fn route_ifaces_v6(routes: &[Route6], dst: Ipv6Addr) -> Vec<String> {
    best(routes, |r| r.is_usable() && r.contains(dst), |r| (r.prefix_len, r.metric), |r| r.egress_iface())
}

#[cfg(test)]
/// The device of the longest-prefix, lowest-metric usable IPv6 route to
/// `dst` (the first in table order on a tie); `lo` for the host's own
/// addresses.
pub fn route_iface_v6(routes: &[Route6], dst: Ipv6Addr) -> Option<String> {
    route_ifaces_v6(routes, dst).into_iter().next()
}

/// The sorted, deduplicated devices (never `lo`) that route any endpoint,
/// given parsed tables.
pub fn uplinks_from_tables(endpoints: &[IpAddr], v4: &[Route4], v6: &[Route6]) -> Vec<String> {
    let mut set = BTreeSet::new();
    for ep in endpoints {
        let ifaces = match ep.to_canonical() {
            IpAddr::V4(a) => route_ifaces_v4(v4, a),
            IpAddr::V6(a) => route_ifaces_v6(v6, a),
        };
        set.extend(ifaces.into_iter().filter(|i| i != "lo"));
    }
    set.into_iter().collect()
}

/// [`uplinks_for`] with the tables read from `net_dir` (`/proc/net`, or
/// `/proc/<pid>/net` for another process's network namespace).
pub fn uplinks_for_in(net_dir: &Path, endpoints: &[IpAddr]) -> io::Result<Vec<String>> {
    let (want4, want6) = endpoints.iter().fold((false, false), |(a, b), ep| match ep.to_canonical() {
        IpAddr::V4(_) => (true, b),
        IpAddr::V6(_) => (a, true),
    });
    let v4 = if want4 {
        let p = net_dir.join("route");
        let text = fs::read_to_string(&p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        parse_ipv4_routes(&text)
    } else {
        Vec::new()
    };
    let v6 = if want6 {
        let p = net_dir.join("ipv6_route");
        match fs::read_to_string(&p) {
            Ok(text) => parse_ipv6_routes(&text),
            // IPv6 disabled (ipv6.disable=1) or not built: no IPv6 routes.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        }
    } else {
        Vec::new()
    };
    Ok(uplinks_from_tables(endpoints, &v4, &v6))
}

/// The sorted, deduplicated interfaces (never `lo`) that route any of
/// `endpoints` in the current network namespace. A missing
/// `/proc/net/ipv6_route` means no IPv6, not an error.
pub fn uplinks_for(endpoints: &[IpAddr]) -> io::Result<Vec<String>> {
    uplinks_for_in(Path::new("/proc/net"), endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    // An EC2 host with Docker, as /proc/net/route prints it on x86_64
    // (little-endian), trailing padding included. Routes:
    //   default via 172.31.32.1 dev eth0 metric 100
    //   169.254.0.0/16 dev eth0 metric 1002            (zeroconf link-local)
    //   172.17.0.0/16 dev docker0                      (Docker bridge)
    //   172.31.32.0/20 dev eth0 metric 100
    //   172.31.32.1 dev eth0 metric 100                (DHCP host route)
    //   unreachable 169.254.169.253                    (reject, no device)
    //   10.200.0.0/16 dev wg0, flags without RTF_UP    (synthetic: down)
    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT                                                       
eth0\t00000000\t01201FAC\t0003\t0\t0\t100\t00000000\t0\t0\t0                                                                               
eth0\t0000FEA9\t00000000\t0001\t0\t0\t1002\t0000FFFF\t0\t0\t0                                                                               
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0                                                                               
eth0\t00201FAC\t00000000\t0001\t0\t0\t100\t00F0FFFF\t0\t0\t0                                                                               
eth0\t01201FAC\t00000000\t0005\t0\t0\t100\tFFFFFFFF\t0\t0\t0                                                                               
*\tFDA9FEA9\t00000000\t0205\t0\t0\t0\tFFFFFFFF\t0\t0\t0                                                                               
wg0\t0000C80A\t00000000\t0000\t0\t0\t0\t0000FFFF\t0\t0\t0                                                                               
";

    // An EC2 (Nitro) host with IPv6 on ens5 and Docker, as
    // /proc/net/ipv6_route prints it. Routes:
    //   2001:db8:1234:5600::/64 dev ens5 metric 256
    //   fd00:ec2::/64 dev ens5 metric 256
    //   unreachable 2001:db8:dead::/48 (dev lo, RTF_REJECT)
    //   fe80::/64 dev ens5 metric 256, fe80::/64 dev docker0 metric 256
    //   default via fe80::4a1:b2ff:fec3:d4e5 dev ens5 metric 1024 (RA)
    //   local ::1, local 2001:db8:1234:5600::abc, local fe80::… (table local)
    //   anycast 2001:db8:1234:5600:: dev ens5 (table local)
    //   multicast ff00::/8 on ens5 and docker0 (table local)
    //   the null entries (::/0 dev lo, RTF_REJECT, metric 0xffffffff)
    const IPV6_ROUTE: &str = "\
20010db8123456000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     ens5
fd000ec2000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     ens5
20010db8dead00000000000000000000 30 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000201       lo
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     ens5
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001  docker0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe8000000000000004a1b2fffec3d4e5 00000400 00000004 00000000 00450003     ens5
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
20010db8123456000000000000000000 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 00300001     ens5
20010db8123456000000000000000abc 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001     ens5
fe8000000000000004a1b2fffec3d4e6 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001     ens5
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000003 00000000 00000001     ens5
ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001  docker0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    fn v4() -> Vec<Route4> {
        parse_ipv4_routes_endian(ROUTE, true)
    }
    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_proc_net_route() {
        let r = v4();
        assert_eq!(r.len(), 7, "header skipped, every route kept");
        assert_eq!(
            r[0],
            Route4 {
                iface: "eth0".into(),
                destination: ip4("0.0.0.0"),
                gateway: ip4("172.31.32.1"),
                mask: ip4("0.0.0.0"),
                flags: RTF_UP | RTF_GATEWAY,
                metric: 100,
            }
        );
        assert_eq!((r[1].destination, r[1].prefix_len(), r[1].metric), (ip4("169.254.0.0"), 16, 1002));
        assert_eq!((r[2].iface.as_str(), r[2].destination, r[2].prefix_len()), ("docker0", ip4("172.17.0.0"), 16));
        assert_eq!((r[3].destination, r[3].prefix_len()), (ip4("172.31.32.0"), 20));
        assert_eq!((r[4].prefix_len(), r[4].flags & RTF_HOST), (32, RTF_HOST));
        assert_eq!((r[5].iface.as_str(), r[5].destination), ("*", ip4("169.254.169.253")));
        assert!(!r[5].is_usable() && !r[6].is_usable());
    }

    #[test]
    fn big_endian_hosts_print_network_order() {
        let r = parse_ipv4_routes_endian("eth0\tA9FE0000\tAC1F2001\t0003\t0\t0\t0\tFFFF0000\n", false);
        assert_eq!((r[0].destination, r[0].gateway, r[0].prefix_len()), (ip4("169.254.0.0"), ip4("172.31.32.1"), 16));
    }

    #[test]
    fn ipv4_longest_prefix_match() {
        let r = v4();
        // The /16 link-local route beats the default despite its metric.
        assert_eq!(route_iface_v4(&r, ip4("169.254.169.254")).as_deref(), Some("eth0"));
        assert_eq!(route_iface_v4(&r, ip4("172.17.0.5")).as_deref(), Some("docker0"));
        assert_eq!(route_iface_v4(&r, ip4("172.31.40.9")).as_deref(), Some("eth0"));
        assert_eq!(route_iface_v4(&r, ip4("8.8.8.8")).as_deref(), Some("eth0"));
        // Reject route skipped: falls back to 169.254.0.0/16.
        assert_eq!(route_iface_v4(&r, ip4("169.254.169.253")).as_deref(), Some("eth0"));
        // Down route skipped: falls back to the default.
        assert_eq!(route_iface_v4(&r, ip4("10.200.1.1")).as_deref(), Some("eth0"));
        // Without a default route, nothing routes 8.8.8.8.
        let no_default: Vec<Route4> = r.into_iter().filter(|r| r.prefix_len() > 0).collect();
        assert_eq!(route_iface_v4(&no_default, ip4("8.8.8.8")), None);
    }

    #[test]
    fn ipv4_lower_metric_wins_on_equal_prefix() {
        let t = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                 eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        let r = parse_ipv4_routes_endian(t, true);
        assert_eq!(route_ifaces_v4(&r, ip4("169.254.169.254")), vec!["eth0".to_string()]);
    }

    #[test]
    fn parses_proc_net_ipv6_route() {
        let r = parse_ipv6_routes(IPV6_ROUTE);
        assert_eq!(r.len(), 14);
        assert_eq!(
            r[5],
            Route6 {
                iface: "ens5".into(),
                destination: Ipv6Addr::UNSPECIFIED,
                prefix_len: 0,
                source: Ipv6Addr::UNSPECIFIED,
                source_prefix_len: 0,
                next_hop: ip6("fe80::4a1:b2ff:fec3:d4e5"),
                metric: 1024,
                flags: 0x0045_0003,
            }
        );
        assert_eq!((r[1].destination, r[1].prefix_len), (ip6("fd00:ec2::"), 64));
        assert_eq!((r[2].iface.as_str(), r[2].prefix_len, r[2].is_usable()), ("lo", 48, false));
        assert_eq!((r[12].iface.as_str(), r[12].metric, r[12].is_usable()), ("lo", u32::MAX, false));
        assert_eq!(r[4].iface, "docker0");
    }

    #[test]
    fn ipv6_longest_prefix_match() {
        let r = parse_ipv6_routes(IPV6_ROUTE);
        assert_eq!(route_iface_v6(&r, ip6("fd00:ec2::254")).as_deref(), Some("ens5"));
        assert_eq!(route_iface_v6(&r, ip6("2606:4700::1111")).as_deref(), Some("ens5"));
        // The lo reject route is skipped, so the default carries it.
        assert_eq!(route_iface_v6(&r, ip6("2001:db8:dead::1")).as_deref(), Some("ens5"));
        // The host's own and anycast addresses are delivered locally.
        assert_eq!(route_iface_v6(&r, ip6("2001:db8:1234:5600::abc")).as_deref(), Some("lo"));
        assert_eq!(route_iface_v6(&r, ip6("2001:db8:1234:5600::")).as_deref(), Some("lo"));
        assert_eq!(route_iface_v6(&r, ip6("::1")).as_deref(), Some("lo"));
        // Link-local: every interface with fe80::/64.
        assert_eq!(route_ifaces_v6(&r, ip6("fe80::a9fe:a9fe")), vec!["ens5".to_string(), "docker0".to_string()]);
        // Only the null entries left: nothing routes.
        let only_lo: Vec<Route6> = r.iter().filter(|r| r.iface == "lo" && r.flags & RTF_LOCAL == 0).cloned().collect();
        assert_eq!(route_iface_v6(&only_lo, ip6("fd00:ec2::254")), None);
    }

    #[test]
    fn ipv6_multipath_siblings_all_count() {
        let t = "\
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000800 00000001 00000000 00000003     eth2
";
        let r = parse_ipv6_routes(t);
        assert_eq!(route_ifaces_v6(&r, ip6("fd00:ec2::254")), vec!["eth0".to_string(), "eth1".to_string()]);
    }

    #[test]
    fn uplinks_from_both_tables() {
        let eps: Vec<IpAddr> = ["169.254.169.254", "169.254.170.2", "fd00:ec2::254", "::ffff:172.17.0.9", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got = uplinks_from_tables(&eps, &v4(), &parse_ipv6_routes(IPV6_ROUTE));
        assert_eq!(got, vec!["docker0".to_string(), "ens5".to_string(), "eth0".to_string()]);
        assert!(uplinks_from_tables(&eps, &[], &[]).is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse_ipv4_routes("garbage\n\neth0\tzz\t00000000\t0001\t0\t0\t0\t00000000\n").is_empty());
        assert!(parse_ipv6_routes("short line\n00 00 00 00 00 00 00 00 00 lo\n").is_empty());
        // Prefix length > 128.
        let bad = IPV6_ROUTE.lines().next().unwrap().replacen(" 40 ", " 81 ", 1);
        assert!(parse_ipv6_routes(&bad).is_empty());
    }

    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("imds-uplinks-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    #[test]
    fn missing_ipv6_route_is_no_ipv6() {
        let d = tempdir("noipv6");
        let native = if cfg!(target_endian = "little") { "0000FEA9\t0000FFFF" } else { "A9FE0000\tFFFF0000" };
        let (dst, mask) = native.split_once('\t').unwrap();
        fs::write(
            d.0.join("route"),
            format!("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t{dst}\t00000000\t0001\t0\t0\t0\t{mask}\t0\t0\t0\n"),
        )
        .unwrap();
        let eps: Vec<IpAddr> = vec!["169.254.169.254".parse().unwrap(), "fd00:ec2::254".parse().unwrap()];
        assert_eq!(uplinks_for_in(&d.0, &eps).unwrap(), vec!["eth0".to_string()]);
        // A missing IPv4 table is an error.
        fs::remove_file(d.0.join("route")).unwrap();
        assert!(uplinks_for_in(&d.0, &eps).is_err());
        // Unless no IPv4 endpoint needs it.
        assert!(uplinks_for_in(&d.0, &eps[1..]).unwrap().is_empty());
    }

    #[test]
    fn reads_this_hosts_tables() {
        // Whatever this namespace routes, reading it must work and never list lo.
        let eps: Vec<IpAddr> = vec!["169.254.169.254".parse().unwrap(), "fd00:ec2::254".parse().unwrap()];
        match uplinks_for(&eps) {
            Ok(ifaces) => assert!(!ifaces.iter().any(|i| i == "lo")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // no /proc here
            Err(e) => panic!("{e}"),
        }
    }
}
