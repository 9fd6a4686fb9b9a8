//! Which AWS SDK sent a request, from its `User-Agent`, and what we know of
//! that SDK: the first version that takes credentials from IRSA and from
//! EKS Pod Identity, and what it does when a token reply never comes.
//!
//! Security rule: of the header, only a product name from [`PRODUCTS`] and
//! the version that follows it leave this module, and the version only when
//! it is made of digits, letters, dots and dashes (at most
//! [`MAX_VERSION`] bytes). Everything else in the header (OS, language,
//! application suffixes a user may have set) is never kept.
use std::fmt;

use serde::{Deserialize, Serialize};

/// An SDK and its version, as `name/version` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sdk {
    /// One of [`PRODUCTS`]' names.
    pub name: &'static str,
    /// `None` when the header named the product without a plausible version.
    pub version: Option<String>,
}

pub const MAX_VERSION: usize = 24;

/// `User-Agent` product tokens, in the order they win when a header holds
/// several (the AWS CLI's carries botocore's; boto3's carries botocore's),
/// and the name we write. Real headers, from the SDKs' sources or captured
/// in the lab:
/// - botocore `session.user_agent()`: `Botocore/1.43.11 Python/3.11.7 Linux/6.1`
/// - boto3: `Boto3/1.34.0 Python/3.11.7 Linux/6.1 Botocore/1.34.0`
/// - AWS CLI v2: `aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.amzn.2`
/// - aws-config (Rust) IMDS client: `aws-sdk-rust/1.7.0 ua/2.1 api/imds/1.13.0 os/linux lang/rust/1.95.0`
/// - Go v2 IMDS client: `aws-sdk-go-v2/1.24.0 os/linux lang/go#1.21.5 api/imds#1.14.11`
/// - Go v1: `aws-sdk-go/1.50.0 (go1.21.5; linux; amd64)`
/// - JavaScript v2: `aws-sdk-nodejs/2.1550.0 linux/v18.19.0`; v3: `aws-sdk-js/3.470.0 ua/2.0 os/linux#6.1`
/// - Java (v1 1.x, v2 2.x): `aws-sdk-java/2.21.30 Linux/6.1 OpenJDK_64-Bit_Server_VM/17`
const PRODUCTS: [(&str, &str); 12] = [
    ("aws-cli", "aws-cli"),
    ("Boto3", "boto3"),
    ("Botocore", "botocore"),
    ("aws-sdk-go-v2", "aws-sdk-go-v2"),
    ("aws-sdk-go", "aws-sdk-go"),
    ("aws-sdk-nodejs", "aws-sdk-js-v2"),
    ("aws-sdk-js", "aws-sdk-js-v3"),
    ("aws-sdk-java", "aws-sdk-java"),
    ("aws-sdk-rust", "aws-sdk-rust"),
    ("aws-sdk-ruby3", "aws-sdk-ruby"),
    ("aws-sdk-php", "aws-sdk-php"),
    ("aws-sdk-dotnet-coreclr", "aws-sdk-net"),
];

/// The SDK a `User-Agent` value names, if any of [`PRODUCTS`].
pub fn from_user_agent(value: &[u8]) -> Option<Sdk> {
    let tokens = || value.split(|&b| b == b' ' || b == b'\t').filter(|t| !t.is_empty());
    PRODUCTS.iter().find_map(|&(product, name)| {
        tokens().find_map(|t| {
            let (p, v) = match t.iter().position(|&b| b == b'/') {
                Some(i) => (&t[..i], Some(&t[i + 1..])),
                None => (t, None),
            };
            p.eq_ignore_ascii_case(product.as_bytes())
                .then(|| Sdk { name, version: v.and_then(version) })
        })
    })
}

fn version(v: &[u8]) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_VERSION
        && v[0].is_ascii_digit()
        && v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-');
    // Checked ASCII above.
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

/// `amz-sdk-request: attempt=N; max=M` (SDKs with standard retries send it):
/// the attempt and the most the SDK will make, when both are small numbers.
pub fn attempt(value: &[u8]) -> Option<(u8, u8)> {
    let mut attempt = None;
    let mut max = None;
    for part in value.split(|&b| b == b';') {
        let part = part.trim_ascii();
        let mut kv = part.splitn(2, |&b| b == b'=');
        let (k, v) = (kv.next()?, kv.next()?);
        let n = std::str::from_utf8(v).ok()?.parse::<u8>().ok();
        match k {
            b"attempt" => attempt = n,
            b"max" => max = n,
            _ => {}
        }
    }
    Some((attempt?, max?))
}

/// What the SDK's own sources say it does when its token request gets no
/// reply, for the finding's summary.
// Where each figure is set: botocore/utils.py `IMDSFetcher` (timeout 1 s,
// one attempt, then on without a token; the lab's botocore test measures
// the single 1 s wait); aws-sdk-js v2 lib/metadata_service.js (timeout 1 s,
// maxRetries 3, then the IMDSv1 path); @smithy/credential-provider-imds
// (timeout 1 s); aws-sdk-go-v2 feature/ec2/imds (3 attempts of 0.5 s);
// aws-sdk-java-v2 imds `Ec2MetadataClient` (1 s a try); aws-config
// `imds::client` (no IMDSv1 path: the lab's Rust test sees one PUT, then no
// credentials).
pub fn at_the_limit(sdk: &Sdk) -> Option<&'static str> {
    Some(match sdk.name {
        "botocore" | "boto3" | "aws-cli" => {
            "botocore waits 1 s for the token once per process, then asks without one (IMDSv1)"
        }
        "aws-sdk-js-v2" => {
            "the JavaScript SDK v2 tries up to 4 times, 1 s each, then falls back to IMDSv1"
        }
        "aws-sdk-js-v3" => "the JavaScript SDK v3 waits 1 s for the token",
        "aws-sdk-go-v2" => {
            "the Go SDK v2 tries 3 times, 0.5 s each, before it gives up on the token"
        }
        "aws-sdk-java" => "the Java SDK waits 1 s on each try",
        "aws-sdk-rust" => {
            "the SDK for Rust has no IMDSv1 fallback: with no token, it gets no credentials"
        }
        _ => return None,
    })
}

/// A workload's own role, as the SDK finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// IRSA: `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`.
    WebIdentity,
    /// EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
    PodIdentity,
}

/// The first version of `sdk` that takes credentials from `provider`, from
/// the EKS user guide's tables ("Use IRSA with the AWS SDK",
/// iam-roles-for-service-accounts-minimum-sdk; "Use pod identity with the
/// AWS SDK", pod-id-minimum-sdk). A `release-…` entry is a dated release of
/// an SDK whose packages are versioned apart: it is said, never compared.
pub fn minimum(sdk: &str, provider: Provider) -> Option<&'static str> {
    use Provider::*;
    Some(match (sdk, provider) {
        ("boto3", WebIdentity) => "1.9.220",
        ("botocore", WebIdentity) => "1.12.200",
        ("aws-cli", WebIdentity) => "1.16.232",
        ("aws-sdk-go", WebIdentity) => "1.23.13",
        ("aws-sdk-js-v2", WebIdentity) => "2.525.0",
        ("aws-sdk-js-v3", WebIdentity) => "3.27.0",
        ("aws-sdk-ruby", WebIdentity) => "3.58.0",
        ("aws-sdk-php", WebIdentity) => "3.110.7",
        ("aws-sdk-net", WebIdentity) => "3.3.659.1",
        ("boto3" | "botocore", PodIdentity) => "1.34.41",
        ("aws-sdk-go", PodIdentity) => "1.47.11",
        ("aws-sdk-go-v2", PodIdentity) => "release-2023-11-14",
        ("aws-sdk-js-v2", PodIdentity) => "2.1550.0",
        ("aws-sdk-js-v3", PodIdentity) => "3.458.0",
        ("aws-sdk-ruby", PodIdentity) => "3.188.0",
        ("aws-sdk-rust", PodIdentity) => "release-2024-03-13",
        ("aws-sdk-php", PodIdentity) => "3.287.1",
        ("aws-sdk-net", PodIdentity) => "3.7.734.0",
        _ => return None,
    })
}

/// The Java and the AWS CLI rows depend on the major version.
pub fn minimum_for(sdk: &Sdk, provider: Provider) -> Option<&'static str> {
    let major = sdk.version.as_deref().and_then(|v| v.split('.').next()).unwrap_or("");
    match (sdk.name, major, provider) {
        ("aws-sdk-java", "2", Provider::WebIdentity) => Some("2.10.11"),
        ("aws-sdk-java", "2", Provider::PodIdentity) => Some("2.21.30"),
        ("aws-sdk-java", "1", Provider::WebIdentity) => Some("1.11.704"),
        ("aws-sdk-java", "1", Provider::PodIdentity) => Some("1.12.746"),
        ("aws-cli", "1", Provider::PodIdentity) => Some("1.30.0"),
        ("aws-cli", "2", Provider::PodIdentity) => Some("2.15.0"),
        ("aws-cli", "2", Provider::WebIdentity) => Some("2.0.0"),
        ("aws-sdk-java" | "aws-cli", _, _) => None,
        _ => minimum(sdk.name, provider),
    }
}

/// Whether `sdk` is older than `min`: `Some(true)` only when both are plain
/// dotted numbers and the SDK's is lower.
pub fn older_than(sdk: &Sdk, min: &str) -> Option<bool> {
    let parse = |v: &str| -> Option<Vec<u64>> {
        v.split('.').map(|p| p.parse::<u64>().ok()).collect::<Option<Vec<_>>>()
    };
    let (have, need) = (parse(sdk.version.as_deref()?)?, parse(min)?);
    Some(have < need)
}

impl fmt::Display for Sdk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}/{v}", self.name),
            None => f.write_str(self.name),
        }
    }
}

impl Serialize for Sdk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sdk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sdk, D::Error> {
        Sdk::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<String> for Sdk {
    type Error = String;
    /// Read back from a recorded stream: the same rules as the header.
    fn try_from(s: String) -> Result<Sdk, String> {
        let (name, v) = s.split_once('/').map_or((s.as_str(), None), |(n, v)| (n, Some(v)));
        let name = PRODUCTS
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(_, n)| *n)
            .ok_or_else(|| format!("unknown SDK {name:?}"))?;
        Ok(Sdk { name, version: v.and_then(|v| version(v.as_bytes())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk(ua: &str) -> Option<String> {
        from_user_agent(ua.as_bytes()).map(|s| s.to_string())
    }

    #[test]
    fn each_sdks_real_header_names_it_and_its_version() {
        for (ua, want) in [
            // Captured from botocore 1.43.11 and aws-config 1.13 in the lab.
            ("Botocore/1.43.11 Python/3.11.7 Linux/6.18.44-fc-v1300", "botocore/1.43.11"),
            (
                "aws-sdk-rust/1.7.0 ua/2.1 api/imds/1.13.0 os/linux lang/rust/1.95.0 md/http#hyper-1.x",
                "aws-sdk-rust/1.7.0",
            ),
            ("Boto3/1.34.0 Python/3.11.7 Linux/6.1 Botocore/1.34.0", "boto3/1.34.0"),
            (
                "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.amzn.2 prompt/off",
                "aws-cli/2.15.0",
            ),
            ("aws-cli/1.32.0 Python/3.11 Linux/6.1 botocore/1.34.0", "aws-cli/1.32.0"),
            (
                "aws-sdk-go-v2/1.24.0 os/linux lang/go#1.21.5 api/imds#1.14.11",
                "aws-sdk-go-v2/1.24.0",
            ),
            ("aws-sdk-go/1.50.0 (go1.21.5; linux; amd64)", "aws-sdk-go/1.50.0"),
            ("aws-sdk-nodejs/2.1550.0 linux/v18.19.0", "aws-sdk-js-v2/2.1550.0"),
            (
                "aws-sdk-js/3.470.0 ua/2.0 os/linux#6.1 lang/js md/nodejs#18.19.0",
                "aws-sdk-js-v3/3.470.0",
            ),
            ("aws-sdk-java/2.21.30 Linux/6.1 OpenJDK_64-Bit_Server_VM/17", "aws-sdk-java/2.21.30"),
        ] {
            assert_eq!(sdk(ua).as_deref(), Some(want), "{ua}");
        }
    }

    #[test]
    fn cut_empty_and_hostile_headers_name_nothing_they_do_not_hold() {
        assert_eq!(sdk(""), None);
        assert_eq!(sdk("curl/8.5.0"), None);
        assert_eq!(sdk("Mozilla/5.0 (X11; Linux x86_64)"), None);
        // A product without a plausible version: the name only.
        assert_eq!(sdk("Botocore/"), Some("botocore".into()));
        assert_eq!(sdk("Botocore/$(reboot)"), Some("botocore".into()));
        assert_eq!(sdk("Botocore/1.2.3;rm"), Some("botocore".into()));
        assert_eq!(sdk(&format!("Botocore/1.{}", "9".repeat(40))), Some("botocore".into()));
        // A lookalike is not the product.
        assert_eq!(sdk("aws-sdk-goat/1.0"), None);
        assert_eq!(sdk("xBotocore/1.0"), None);
        // Bytes that are not UTF-8 do not stop the search.
        assert_eq!(
            from_user_agent(b"\xff\xfe Botocore/1.0").map(|s| s.to_string()),
            Some("botocore/1.0".into())
        );
    }

    #[test]
    fn the_retry_header_gives_attempt_and_max() {
        assert_eq!(attempt(b"attempt=1; max=3"), Some((1, 3)));
        assert_eq!(attempt(b"amz-sdk-invocation-id=x; attempt=2;max=4"), Some((2, 4)));
        assert_eq!(attempt(b"attempt=1"), None);
        assert_eq!(attempt(b"attempt=999; max=3"), None);
        assert_eq!(attempt(b""), None);
    }

    #[test]
    fn minimums_come_from_the_eks_tables_and_compare_only_numbers() {
        let s = |v: &str, name| Sdk { name, version: Some(v.into()) };
        let old = s("1.34.40", "botocore");
        let min = minimum_for(&old, Provider::PodIdentity).unwrap();
        assert_eq!((min, older_than(&old, min)), ("1.34.41", Some(true)));
        assert_eq!(older_than(&s("1.43.11", "botocore"), min), Some(false));
        let java1 = s("1.12.700", "aws-sdk-java");
        assert_eq!(minimum_for(&java1, Provider::PodIdentity), Some("1.12.746"));
        let rust = s("1.7.0", "aws-sdk-rust");
        let dated = minimum_for(&rust, Provider::PodIdentity).unwrap();
        assert_eq!(older_than(&rust, dated), None, "a dated release is never compared");
        assert_eq!(minimum_for(&rust, Provider::WebIdentity), None);
    }

    #[test]
    fn a_recorded_sdk_reads_back_under_the_same_rules() {
        let s: Sdk = serde_json::from_str("\"botocore/1.43.11\"").unwrap();
        assert_eq!(s, Sdk { name: "botocore", version: Some("1.43.11".into()) });
        assert!(serde_json::from_str::<Sdk>("\"evil/1.0\"").is_err());
        let s: Sdk = serde_json::from_str("\"botocore/x y\"").unwrap();
        assert_eq!(s.version, None);
    }
}
