//! What the diagnosis says: one `Finding` per problem per container, written
//! as a JSON line with `"type":"finding"` next to the events.
//!
//! Findings carry counts, TTLs, paths and times only: never a token, a reply
//! body or a header value (the observer never sees them anyway).
use serde::{Deserialize, Serialize};

/// Tag so that a finding line reads `{"type":"finding",...}` and only such
/// lines deserialize as findings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FindingTag {
    #[default]
    #[serde(rename = "finding")]
    Finding,
}

/// The kinds, declared worst first: `Ord` is the severity order used for
/// "worst first" (the first kind is the worst).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Token replies die at the hop limit before reaching the container.
    HopLimitExceeded,
    /// The same, on a node whose provisioner set hop limit 1 to keep pods
    /// from the node's IAM role: the workload needs a role of its own.
    NodeRoleBlocked,
    /// 401: the token is missing/invalid/expired and tokens are required.
    TokenRejected,
    /// 403: IMDS disabled, or a PUT to a versioned token path.
    ImdsForbidden,
    /// Connection refused or timed out, without any TTL drop.
    Unreachable,
    /// 400: bad token PUT (TTL header missing or out of range).
    BadTokenRequest,
    /// A token request failed and the container went on without a token.
    Imdsv1Fallback,
    /// A workload configured for a role of its own (IRSA, EKS Pod
    /// Identity) took the node's role credentials from IMDS.
    NodeRoleLeak,
    /// The container is farther from the uplink than the hop limit allows and
    /// has not asked for a token yet.
    AtRisk,
    /// Tokens or role credentials fetched far more often than a client that
    /// caches them needs.
    CredentialStorm,
    /// Only successful exchanges.
    Healthy,
}

impl FindingKind {
    pub const ALL: [FindingKind; 11] = [
        FindingKind::HopLimitExceeded,
        FindingKind::NodeRoleBlocked,
        FindingKind::TokenRejected,
        FindingKind::ImdsForbidden,
        FindingKind::Unreachable,
        FindingKind::BadTokenRequest,
        FindingKind::Imdsv1Fallback,
        FindingKind::NodeRoleLeak,
        FindingKind::AtRisk,
        FindingKind::CredentialStorm,
        FindingKind::Healthy,
    ];

    /// The name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::HopLimitExceeded => "hop_limit_exceeded",
            FindingKind::NodeRoleBlocked => "node_role_blocked",
            FindingKind::TokenRejected => "token_rejected",
            FindingKind::ImdsForbidden => "imds_forbidden",
            FindingKind::Unreachable => "unreachable",
            FindingKind::BadTokenRequest => "bad_token_request",
            FindingKind::Imdsv1Fallback => "imdsv1_fallback",
            FindingKind::NodeRoleLeak => "node_role_leak",
            FindingKind::AtRisk => "at_risk",
            FindingKind::CredentialStorm => "credential_storm",
            FindingKind::Healthy => "healthy",
        }
    }

    /// 0 is the worst.
    pub fn severity(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who the finding is about: the same identity events carry.
pub use crate::model::Container;

/// Requests the container made to metadata endpoints, retransmissions not
/// counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Requests {
    pub total: u64,
    /// `PUT /latest/api/token`.
    pub token: u64,
    /// Under `/latest/meta-data/iam/security-credentials/`.
    pub credentials: u64,
    pub other: u64,
    /// AWS IMDS requests without a token header (token PUTs excluded).
    pub imdsv1: u64,
    /// AWS IMDS requests with a token header.
    pub imdsv2: u64,
}

/// Request → first delivered reply-with-status, completed requests only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub max: f64,
    /// Median and 99th percentile: upper edges of histogram buckets
    /// (within 25 % above the true value), never past `max`.
    pub p50: f64,
    pub p99: f64,
}

/// `credential_storm`: what the workload fetched within the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fetches {
    /// The window: the last this many minutes, to the workload's latest
    /// request.
    pub window_minutes: u32,
    /// `PUT /latest/api/token` requests in it.
    pub tokens: u32,
    /// Requests under `/latest/meta-data/iam/security-credentials/` in it.
    pub credentials: u32,
    /// More of either is a storm.
    pub threshold: u32,
}

/// One endpoint the container failed to reach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointFailures {
    /// "ip:port".
    pub endpoint: String,
    pub refused: u64,
    /// Connects with no answer, and requests with no reply (and no TTL drop).
    pub timeouts: u64,
}

/// The facts behind a finding. Which fields are set depends on the kind;
/// absent ones are omitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Evidence {
    /// "required" or "optional": what IMDS answered a tokenless request on
    /// this node (401, or a success); absent until one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imds_tokens: Option<String>,
    /// The AWS SDK the container's latest request named in `User-Agent`,
    /// `name/version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdk: Option<crate::model::Sdk>,
    /// `node_role_leak`: the first version of that SDK that supports the
    /// workload's own provider (the EKS user guide's table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdk_minimum: Option<String>,
    /// `node_role_leak`: IMDS credential answers the workload received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_credentials: Option<u64>,
    /// TTL the lost token replies carried when they reached the host's uplink
    /// (= the instance's hop limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_ttl_at_host: Option<u8>,
    /// TTL the container sent minus TTL of the same packet leaving the uplink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarding_hops: Option<u8>,
    /// forwarding_hops + 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_hop_limit: Option<u8>,
    /// The hop limit seen on this node: TTL of token replies at the uplink,
    /// from any container or the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_hop_limit: Option<u8>,
    /// Distinct token replies that reached the host and died on the way in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_replies: Option<u64>,
    /// Kernel drop events (TTL expired while forwarding) on this container's
    /// connections; retransmissions are separate drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<u64>,
    /// ICMP time-exceeded messages the host sent back (corroboration only:
    /// rate-limited, not counted in `drops`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_time_exceeded: Option<u64>,
    /// Sum over lost attempts of the time until the client's next attempt
    /// (until now for the last one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_lost: Option<f64>,
    /// Token requests that failed (lost, timed out, 4xx/5xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_token_requests: Option<u64>,
    /// Tokenless (IMDSv1) requests sent after the first failed token request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenless_requests: Option<u64>,
    /// credential_storm: token and credential requests in the window that
    /// passed the threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetches: Option<Fetches>,
    /// HTTP status of token_rejected / imds_forbidden / bad_token_request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How many replies had that status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responses: Option<u64>,
    /// The last request that got that status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Every path that got that status (a few).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// bad_token_request: whether the PUT carried the TTL header at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ttl_header: Option<bool>,
    /// unreachable: the endpoints and how they failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointFailures>,
    /// unreachable: kernel drop reasons seen on the failed connections.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop_reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    /// The capture lost records on this node: counts may be low.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_events: Option<u64>,
    /// Records of this container its budget held back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed_records: Option<u64>,
}

/// One attempt the client made, as it saw it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attempt {
    /// When the request (or, for a failed connect, the first SYN) was sent.
    pub ts: String,
    /// Absent for a connect that never carried a request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The endpoint, "ip:port".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// The request carried an IMDSv2 token header (never its value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<bool>,
    /// "ok" (2xx) | "lost" | "timeout" | "refused" | the status ("401").
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// TTL of the reply when it reached the host's uplink (for a lost reply:
    /// what it had left when the host dropped it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_ttl_at_host: Option<u8>,
}

/// How to fix a hop-limit problem, for each way the instance may be managed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fix {
    /// Takes effect on the running instance.
    pub command: String,
    pub launch_template: String,
    pub karpenter: String,
    pub eks_node_group: String,
    /// The hop limit every container of this node needs (at least).
    pub hop_limit: u8,
    /// When the instance id is not known: the line to run on the node that
    /// sets `INSTANCE_ID`, which `command` then reads (`"$INSTANCE_ID"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get_instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// On a node that keeps pods from its role by design: the workload's
    /// own role, the fix to make first. The hop-limit fields above are then
    /// the last resort, for a dedicated pool of nodes (`note` says so).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own_role: Option<OwnRole>,
}

/// A role of the workload's own, for its ServiceAccount: either way works
/// on EKS; Pod Identity needs the eks-pod-identity-agent add-on, IRSA the
/// cluster's OIDC provider (and the pods restarted after the annotation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OwnRole {
    pub pod_identity: String,
    pub irsa: String,
}

/// What the person pasting an [`OwnRole`] command sets first: the commands
/// read them as shell variables, quoted (a `<placeholder>` would be a
/// redirection to bash).
pub const OWN_ROLE_VARS: &str =
    "set CLUSTER to the cluster's name and ROLE_ARN to the ARN of the workload's role first";

impl OwnRole {
    /// For ServiceAccount `service_account` in `namespace` (shell
    /// variables where unknown, as the cluster and the role are).
    pub fn new(namespace: Option<&str>, service_account: Option<&str>) -> Self {
        let ns = namespace.unwrap_or("\"$NAMESPACE\"");
        let sa = service_account.unwrap_or("\"$SERVICE_ACCOUNT\"");
        OwnRole {
            pod_identity: format!(
                "aws eks create-pod-identity-association --cluster \"$CLUSTER\" --namespace {ns} \
                 --service-account {sa} --role-arn \"$ROLE_ARN\""
            ),
            irsa: format!(
                "kubectl annotate serviceaccount -n {ns} {sa} \
                 eks.amazonaws.com/role-arn=\"$ROLE_ARN\""
            ),
        }
    }
}

/// What a fix command says where the instance id is not known: a shell
/// variable, quoted, that [`GET_INSTANCE_ID`] sets (a placeholder such as
/// `<instance-id>` would be read by the shell as a redirection).
pub const INSTANCE_ID_VAR: &str = "\"$INSTANCE_ID\"";

/// One line, run on the node itself (0 hops: the hop limit does not stop
/// it), that sets `INSTANCE_ID` from IMDSv2.
pub const GET_INSTANCE_ID: &str = "INSTANCE_ID=$(TOKEN=$(curl -sX PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60'); curl -sH \"X-aws-ec2-metadata-token: $TOKEN\" http://169.254.169.254/latest/meta-data/instance-id)";

/// The instance id as a fix command writes it: the id, else the variable.
pub fn instance_id_arg(instance_id: Option<&str>) -> &str {
    instance_id.unwrap_or(INSTANCE_ID_VAR)
}

impl Fix {
    /// The remediation for a hop limit of `required`.
    pub fn hop_limit(instance_id: Option<&str>, required: u8) -> Fix {
        let id = instance_id_arg(instance_id);
        Fix {
            command: format!(
                "aws ec2 modify-instance-metadata-options --instance-id {id} \
                 --http-put-response-hop-limit {required} --http-endpoint enabled"
            ),
            launch_template: format!("MetadataOptions.HttpPutResponseHopLimit = {required}"),
            karpenter: format!(
                "EC2NodeClass spec.metadataOptions.httpPutResponseHopLimit: {required}"
            ),
            eks_node_group: format!(
                "set MetadataOptions.HttpPutResponseHopLimit = {required} in the node group's launch \
                 template (Terraform: metadata_options.http_put_response_hop_limit = {required}), \
                 then roll the node group"
            ),
            hop_limit: required,
            get_instance_id: instance_id.is_none().then(|| GET_INSTANCE_ID.to_string()),
            note: None,
            own_role: None,
        }
    }
}

/// A verdict about one container, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    #[serde(rename = "type")]
    pub tag: FindingTag,
    /// Time of the event that established or last changed the finding
    /// (RFC 3339 UTC).
    pub ts: String,
    pub node: String,
    pub kind: FindingKind,
    pub container: Container,
    /// One human sentence (or two).
    pub summary: String,
    pub evidence: Evidence,
    /// The client's attempts with a known outcome, oldest first (the last
    /// 64 at most).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
    /// What the cluster says of the node (see the `node` event), when it
    /// said: the advice fits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_info: Option<crate::model::NodeInfo>,
}

impl Finding {
    pub fn is_healthy(&self) -> bool {
        self.kind == FindingKind::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is not known is a quoted shell variable, never a `<placeholder>`
    /// (bash would redirect: `--cluster <cluster> --namespace` truncates a
    /// file named `--namespace`); names go in as the API gave them.
    #[test]
    fn own_role_commands_paste_as_shell_with_variables_for_what_is_not_known() {
        for own in [OwnRole::new(Some("shop"), Some("web")), OwnRole::new(None, None)] {
            for cmd in [&own.pod_identity, &own.irsa] {
                assert!(!cmd.contains(['<', '>', '|', ';', '&']), "{cmd}");
                assert!(cmd.contains("\"$ROLE_ARN\""), "{cmd}");
            }
            assert!(own.pod_identity.contains("--cluster \"$CLUSTER\" "), "{}", own.pod_identity);
        }
        let unknown = OwnRole::new(None, None);
        assert!(unknown.irsa.starts_with(
            "kubectl annotate serviceaccount -n \"$NAMESPACE\" \"$SERVICE_ACCOUNT\" "
        ));
        assert!(OWN_ROLE_VARS.contains("CLUSTER") && OWN_ROLE_VARS.contains("ROLE_ARN"));
    }
}
