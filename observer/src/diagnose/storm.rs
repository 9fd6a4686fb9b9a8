//! `credential_storm`: a workload that asks for IMDSv2 tokens or role
//! credentials far more often than a client that caches them needs.
//!
//! Role credentials from IMDS live hours (SDKs refresh them minutes before
//! they expire) and a token lives as long as its PUT asked (SDKs ask 6 h).
//! A client that fetches both for every call spends the node's link-local
//! allowance (1,024 packets a second per ENI, shared by every pod and the
//! DNS resolver) and adds two round trips to each call.
use std::time::{SystemTime, UNIX_EPOCH};

use super::state::ReqKind;
use crate::model::{Sdk, bounded::plural};

/// The window requests are counted over: this many one-minute buckets.
pub const WINDOW_MINUTES: usize = 10;

/// More token requests, or more credential requests, than this within
/// [`WINDOW_MINUTES`] is a storm. A caching client makes one of each per
/// process at start and then one per refresh, hours apart (a credential
/// fetch is two requests: the role's name, then its credentials): a pod of
/// 16 worker processes starting together makes 16 token and 32 credential
/// requests. 120 in 10 minutes is 12 a minute sustained, over twice that.
pub const STORM_REQUESTS: u32 = 120;

/// Token and credential requests in the last [`WINDOW_MINUTES`] minutes,
/// by the minute they were sent: a fixed 80 bytes per container.
#[derive(Clone, Debug, Default)]
pub(super) struct FetchWindow {
    /// [token, credentials] per minute, at (minute % WINDOW_MINUTES).
    buckets: [[u32; 2]; WINDOW_MINUTES],
    /// The newest minute counted (minutes since the epoch).
    newest: u64,
}

/// What a storm's finding says: the counts in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Storm {
    pub tokens: u32,
    pub credentials: u32,
}

impl FetchWindow {
    /// Count a request of `kind` sent at `ts`. Requests older than the
    /// window (a replayed recording out of order) are not counted.
    pub fn count(&mut self, kind: ReqKind, ts: SystemTime) {
        let which = match kind {
            ReqKind::Token => 0,
            ReqKind::Credentials => 1,
            ReqKind::Other => return,
        };
        let minute = ts.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60);
        if minute > self.newest {
            // The minutes in between had nothing: clear them (at most the window).
            let gap = (minute - self.newest).min(WINDOW_MINUTES as u64);
            for m in minute + 1 - gap..=minute {
                self.buckets[m as usize % WINDOW_MINUTES] = [0, 0];
            }
            self.newest = minute;
        } else if self.newest - minute >= WINDOW_MINUTES as u64 {
            return;
        }
        let b = &mut self.buckets[minute as usize % WINDOW_MINUTES][which];
        *b = b.saturating_add(1);
    }

    /// The window's counts, when either passes [`STORM_REQUESTS`]. The
    /// window ends at the newest request: a storm that stopped holds until
    /// the container's next token or credential request, or its eviction.
    pub fn storm(&self) -> Option<Storm> {
        let sum = |i: usize| self.buckets.iter().map(|b| b[i]).fold(0u32, u32::saturating_add);
        let (tokens, credentials) = (sum(0), sum(1));
        (tokens > STORM_REQUESTS || credentials > STORM_REQUESTS)
            .then_some(Storm { tokens, credentials })
    }
}

/// How the client named by its `User-Agent` keeps what it fetched.
fn caching_advice(sdk: Option<&Sdk>) -> &'static str {
    match sdk.map(|s| s.name) {
        Some("botocore" | "boto3" | "aws-cli") => {
            "create the boto3 Session (or client) once per process and reuse it: its credentials refresh themselves; a new Session per call fetches them anew"
        }
        Some("aws-sdk-js-v2" | "aws-sdk-js-v3") => {
            "create the SDK client (or its credentials provider) once and reuse it across calls"
        }
        Some("aws-sdk-go" | "aws-sdk-go-v2") => {
            "load the aws.Config (or session) once and share it: its credentials cache is per config"
        }
        Some("aws-sdk-java") => {
            "share one client, or one InstanceProfileCredentialsProvider, per process"
        }
        Some("aws-sdk-rust") => "load the SdkConfig once and share it between clients",
        _ => {
            "fetch a token once per its TTL and credentials once until their Expiration, and reuse them (an AWS SDK does when its client or credentials provider is created once and shared)"
        }
    }
}

/// The finding's summary.
pub(super) fn summary(s: Storm, sdk: Option<&Sdk>) -> String {
    let per_hour = |n: u32| u64::from(n) * (60 / WINDOW_MINUTES as u64);
    let who = sdk.map_or(String::new(), |s| format!(" ({s})"));
    format!(
        "This workload{who} asked for {} and {} in the last {WINDOW_MINUTES} minutes (about {} and {} an hour), where a client that caches them needs one token per its TTL and one credential fetch per refresh, hours apart. Each fetch costs the call a round trip and spends the node's link-local allowance (1,024 packets a second per network interface, shared with every pod and the DNS resolver). Fix: {}.",
        plural(u64::from(s.tokens), "IMDSv2 token", "IMDSv2 tokens"),
        plural(u64::from(s.credentials), "credential request", "credential requests"),
        per_hour(s.tokens),
        per_hour(s.credentials),
        caching_advice(sdk),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn a_client_that_fetches_for_every_call_is_a_storm_and_a_caching_one_is_not() {
        // 5 calls a second, each a token and two credential requests: past
        // the threshold within 13 s.
        let mut w = FetchWindow::default();
        let mut first = None;
        for i in 0..100u64 {
            let ts = at(i / 5);
            w.count(ReqKind::Token, ts);
            w.count(ReqKind::Credentials, ts);
            w.count(ReqKind::Credentials, ts);
            if first.is_none() && w.storm().is_some() {
                first = Some(i);
            }
        }
        assert_eq!(first, Some(60), "the 121st credential request");
        assert_eq!(w.storm(), Some(Storm { tokens: 100, credentials: 200 }));
        // A caching client: 16 processes start (a token and one fetch
        // each), then refresh every 45 minutes, for a day.
        let mut w = FetchWindow::default();
        for _ in 0..16 {
            w.count(ReqKind::Token, at(0));
            w.count(ReqKind::Credentials, at(0));
            w.count(ReqKind::Credentials, at(1));
        }
        for m in (45..24 * 60).step_by(45) {
            for _ in 0..16 {
                w.count(ReqKind::Credentials, at(m * 60));
                w.count(ReqKind::Credentials, at(m * 60));
            }
            assert_eq!(w.storm(), None, "minute {m}");
        }
        // Other requests never count.
        for _ in 0..1000 {
            w.count(ReqKind::Other, at(90_000));
        }
        assert_eq!(w.storm(), None);
    }

    #[test]
    fn the_window_forgets_what_is_older_than_ten_minutes() {
        let mut w = FetchWindow::default();
        for _ in 0..=STORM_REQUESTS {
            w.count(ReqKind::Token, at(0));
        }
        assert!(w.storm().is_some());
        // Nine minutes on, still within the window; ten minutes on, gone.
        w.count(ReqKind::Token, at(9 * 60));
        assert_eq!(w.storm().map(|s| s.tokens), Some(STORM_REQUESTS + 2));
        w.count(ReqKind::Token, at(10 * 60));
        assert_eq!(w.storm(), None);
        // A long silence clears every bucket.
        for _ in 0..=STORM_REQUESTS {
            w.count(ReqKind::Credentials, at(11 * 60));
        }
        w.count(ReqKind::Credentials, at(10_000 * 60));
        assert_eq!(w.storm(), None);
        // Out of order: within the window it counts, older it does not.
        let mut w = FetchWindow::default();
        w.count(ReqKind::Token, at(20 * 60));
        for _ in 0..STORM_REQUESTS {
            w.count(ReqKind::Token, at(15 * 60));
            w.count(ReqKind::Token, at(5 * 60));
        }
        assert_eq!(w.storm().map(|s| s.tokens), Some(STORM_REQUESTS + 1));
    }

    #[test]
    fn the_summary_names_the_rates_and_the_sdks_own_fix() {
        let sdk = Sdk { name: "botocore", version: Some("1.34.0".into()) };
        let s = summary(Storm { tokens: 300, credentials: 600 }, Some(&sdk));
        assert!(s.contains("(botocore/1.34.0) asked for 300 IMDSv2 tokens and 600 credential requests in the last 10 minutes (about 1800 and 3600 an hour)"), "{s}");
        assert!(s.contains("boto3 Session"), "{s}");
        let s = summary(Storm { tokens: 0, credentials: 121 }, None);
        assert!(s.starts_with("This workload asked for 0 IMDSv2 tokens"), "{s}");
        assert!(s.contains("once until their Expiration"), "{s}");
    }
}
