//! Which interfaces carry the metadata endpoints' traffic: the kernel's own
//! answer for each endpoint (RTM_GETROUTE, as `ip route get fibmatch ADDR`)
//! in the observer's network namespace (the host's, as deployed), so that
//! the tc programs attach where the packets really go.
//!
//! What this sees, and what it does not:
//! - The kernel evaluates policy routing (`ip rule`) and every table, for a
//!   packet the host itself would send: no source address, no incoming
//!   interface, mark 0, the observer's uid. A container's traffic that a
//!   rule sends elsewhere (by its source address or the bridge it comes
//!   in by, as with per-ENI tables) leaves by an interface this does not
//!   name: name those with `--iface`.
//! - The answer is the routing entry that matched: every nexthop of a
//!   multipath route counts (containers' flows hash to any of them), dead
//!   ones too (their link may come back). An entry that names no device (a
//!   nexthop object with `nexthop_compat_mode` off) falls back to the
//!   device of the one path the lookup takes.
//! - The host's own and anycast addresses are delivered locally (`lo`): no
//!   uplink. Unreachable, prohibit, blackhole and throw routes, and no route
//!   at all, leave by no interface: no uplink for that endpoint.
//! - IPv6 link-local endpoints (`fe80::/10`) need an interface: every
//!   interface but `lo` is asked, and each one that routes it counts.
//! - IPv4-mapped IPv6 endpoints (`::ffff:a.b.c.d`) are routed as IPv4.
//! - A kernel without IPv6 (`ipv6.disable=1`) routes IPv6 endpoints
//!   nowhere: not an error.
//! - Asked once, at start: routes that change later are not followed.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use tracing::debug;

use crate::sys::netlink::{self, Link, Route};

/// The interfaces to ask about `dst` by (None: let the kernel choose).
fn oifs_to_ask(dst: IpAddr, links: &[Link]) -> Vec<Option<u32>> {
    match dst {
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            links.iter().filter(|l| l.name != "lo").map(|l| Some(l.ifindex)).collect()
        }
        _ => vec![None],
    }
}

/// The sorted, deduplicated interfaces (never `lo`) that the kernel's
/// answers name; an ifindex without a name is skipped.
pub fn uplinks_from_routes<'a>(
    routes: impl IntoIterator<Item = &'a Route>,
    names: &HashMap<u32, String>,
) -> Vec<String> {
    let mut set = BTreeSet::new();
    for route in routes {
        if let Route::Out(oifs) = route {
            set.extend(oifs.iter().filter_map(|i| names.get(i)).filter(|n| *n != "lo").cloned());
        }
    }
    set.into_iter().collect()
}

/// The kernel's answer for `dst`: the matching entry, or, when that names
/// no device, the lookup's.
fn route_to(dst: IpAddr, oif: Option<u32>) -> Result<Route, netlink::Error> {
    match netlink::route_get(dst, oif, true)? {
        Route::Out(oifs) if oifs.is_empty() => netlink::route_get(dst, oif, false),
        route => Ok(route),
    }
}

/// The sorted, deduplicated interfaces (never `lo`) that route any of
/// `endpoints` in the current network namespace.
pub fn uplinks_for(endpoints: &[IpAddr]) -> Result<Vec<String>, netlink::Error> {
    let links = netlink::links()?;
    let names: HashMap<u32, String> = links.iter().map(|l| (l.ifindex, l.name.clone())).collect();
    let mut routes = Vec::new();
    for ep in endpoints {
        let dst = ep.to_canonical();
        for oif in oifs_to_ask(dst, &links) {
            let route = route_to(dst, oif)?;
            debug!(endpoint = %dst, ?oif, ?route, "the kernel's route");
            routes.push(route);
        }
    }
    Ok(uplinks_from_routes(&routes, &names))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HashMap<u32, String> {
        [(1, "lo"), (2, "ens5"), (3, "docker0"), (4, "eth1")]
            .into_iter()
            .map(|(i, n)| (i, n.to_string()))
            .collect()
    }

    #[test]
    fn uplinks_from_the_kernels_answers() {
        let routes = [
            // 169.254.169.254 through a multipath default.
            Route::Out(vec![4, 2]),
            // 169.254.170.2 by the first of them again.
            Route::Out(vec![2]),
            // An endpoint that is one of this host's addresses.
            Route::Local,
            Route::Refused("unreachable route".into()),
            // A link-local endpoint asked on lo, or a vanished ifindex.
            Route::Out(vec![1, 9]),
        ];
        assert_eq!(uplinks_from_routes(&routes, &names()), ["ens5", "eth1"]);
        assert!(uplinks_from_routes(&[], &names()).is_empty());
        assert!(uplinks_from_routes(&[Route::Out(vec![])], &names()).is_empty());
    }

    #[test]
    fn link_local_endpoints_are_asked_on_every_interface() {
        let link = |ifindex, name: &str| Link {
            ifindex,
            name: name.into(),
            kind: None,
            peer_netnsid: None,
        };
        let links = [link(1, "lo"), link(2, "ens5"), link(3, "docker0")];
        let ask = |s: &str| oifs_to_ask(s.parse().unwrap(), &links);
        assert_eq!(ask("fe80::a9fe:a9fe"), [Some(2), Some(3)]);
        assert_eq!(ask("fd00:ec2::254"), [None]);
        assert_eq!(ask("169.254.169.254"), [None]);
    }

    /// The real kernel: whatever this namespace routes, asking must work,
    /// IPv6 or not, and never name lo.
    #[test]
    fn asks_this_namespace() {
        let eps: Vec<IpAddr> = ["169.254.169.254", "fd00:ec2::254", "::ffff:127.0.0.1", "::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ifaces = uplinks_for(&eps).expect("RTM_GETROUTE needs no privilege");
        assert!(!ifaces.iter().any(|i| i == "lo"), "{ifaces:?}");
        assert!(uplinks_for(&["127.0.0.1".parse().unwrap()]).unwrap().is_empty());
    }
}
