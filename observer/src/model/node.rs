//! What the cluster says of the node the observer runs on: who provisioned
//! it (and so whether hop limit 1 there is a control or an accident), and
//! the instance behind it. Read from the Node object's labels and
//! `spec.providerID` (identity/kubernetes.rs); carried by a `node` event
//! and by findings. Names and ids only: nothing here is a secret.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who made the node. Each of these launches nodes that require IMDSv2 at
/// hop limit 1 by default or by an explicit choice, to keep pods from the
/// node's IAM role:
/// - Karpenter: EC2NodeClass `metadataOptions` defaults to tokens required,
///   hop limit 1 ("disable IMDS access from containers not on the host
///   network", Karpenter's docs);
/// - EKS managed node groups on AL2023 with EKS's launch template: tokens
///   required, hop limit 1 ("containers won't have access to the node's
///   credentials", the EKS user guide);
/// - eksctl: hop limit 2 unless `disablePodIMDS` chose 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provisioner {
    Karpenter,
    EksNodeGroup,
    Eksctl,
}

impl Provisioner {
    /// How an operator names it in a sentence.
    pub fn title(self) -> &'static str {
        match self {
            Provisioner::Karpenter => "Karpenter",
            Provisioner::EksNodeGroup => "an EKS managed node group",
            Provisioner::Eksctl => "eksctl",
        }
    }

    /// What a dedicated pool of nodes is called there.
    pub fn pool_word(self) -> &'static str {
        match self {
            Provisioner::Karpenter => "NodePool (with its own EC2NodeClass)",
            Provisioner::EksNodeGroup | Provisioner::Eksctl => "node group",
        }
    }
}

/// The labels each provisioner puts on its nodes (value: the pool's name),
/// in the order they are tried: an eksctl-made managed node group carries
/// both EKS's and eksctl's.
const POOL_LABELS: [(&str, Provisioner); 4] = [
    ("karpenter.sh/nodepool", Provisioner::Karpenter),
    // Karpenter before v1 (v1alpha5 Provisioners).
    ("karpenter.sh/provisioner-name", Provisioner::Karpenter),
    ("eks.amazonaws.com/nodegroup", Provisioner::EksNodeGroup),
    ("alpha.eksctl.io/nodegroup-name", Provisioner::Eksctl),
];
const REGION: [&str; 2] =
    ["topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region"];
const ZONE: [&str; 2] = ["topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone"];
const INSTANCE_TYPE: [&str; 2] =
    ["node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type"];

/// The `node_info` object of `node` events and findings. Absent fields
/// are omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioner: Option<Provisioner>,
    /// The NodePool, or the node group, it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The EC2 instance, from `spec.providerID` (`aws:///<zone>/<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// ECS: the cluster this container instance belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecs_cluster: Option<String>,
    /// ECS: the container instance's id (the last part of its ARN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance: Option<String>,
}

impl NodeInfo {
    /// From a Node's labels and `spec.providerID`. Values that are empty,
    /// or that no AWS name could be, count as absent.
    pub fn from_node(labels: &BTreeMap<String, String>, provider_id: Option<&str>) -> Self {
        let get = |keys: &[&str]| {
            keys.iter().find_map(|k| labels.get(*k)).filter(|v| plausible(v)).cloned()
        };
        let (provisioner, pool) = POOL_LABELS
            .iter()
            .find_map(|(k, p)| labels.get(*k).map(|v| (Some(*p), Some(v.clone()))))
            .unwrap_or_default();
        let (zone, instance_id) = provider_id.map(aws_provider_id).unwrap_or_default();
        NodeInfo {
            provisioner,
            pool: pool.filter(|v| plausible(v)),
            instance_id,
            region: get(&REGION),
            zone: get(&ZONE).or(zone),
            instance_type: get(&INSTANCE_TYPE),
            ..Default::default()
        }
    }

    /// From a Nomad node (`GET /v1/node/<id>`): its AWS fingerprint
    /// attributes and its node pool. Nomad provisions nothing: hop limit 1
    /// on such a node is nobody's stated design (no provisioner).
    pub fn from_nomad(attributes: &BTreeMap<String, String>, node_pool: Option<&str>) -> Self {
        let get = |k: &str| attributes.get(k).filter(|v| plausible(v)).cloned();
        NodeInfo {
            provisioner: None,
            pool: node_pool.filter(|p| plausible(p)).map(str::to_string),
            instance_id: attributes
                .get("unique.platform.aws.instance-id")
                .filter(|i| instance_id(i))
                .cloned(),
            region: None,
            zone: get("platform.aws.placement.availability-zone"),
            instance_type: get("platform.aws.instance-type"),
            ..Default::default()
        }
    }

    /// From the ECS agent's `Cluster` and `ContainerInstanceArn`
    /// (`arn:aws:ecs:<region>:<account>:container-instance/[<cluster>/]<id>`):
    /// the cluster, the instance's id and the region. The account is not
    /// kept; what no AWS name could be is left out.
    pub fn from_ecs(cluster: Option<&str>, container_instance_arn: Option<&str>) -> Self {
        let arn = container_instance_arn.unwrap_or_default();
        let mut fields = arn.splitn(6, ':');
        let ecs_arn = fields.next() == Some("arn")
            && fields.next().is_some_and(|p| p.starts_with("aws"))
            && fields.next() == Some("ecs");
        let region = fields.next().filter(|r| ecs_arn && plausible(r)).map(str::to_string);
        let container_instance = fields
            .nth(1)
            .filter(|r| ecs_arn && r.starts_with("container-instance/"))
            .and_then(|r| r.rsplit('/').next())
            .filter(|id| plausible(id))
            .map(str::to_string);
        NodeInfo {
            region,
            ecs_cluster: cluster.filter(|c| plausible(c)).map(str::to_string),
            container_instance,
            ..Default::default()
        }
    }

    /// Whether hop limit `hop_limit` keeps pods from the node's role on
    /// purpose here: a provisioner that does so by default, or by choice,
    /// and the limit it sets for it.
    pub fn blocks_pods_by_design(&self, hop_limit: Option<u8>) -> bool {
        self.provisioner.is_some() && hop_limit == Some(1)
    }
}

/// `aws:///us-east-1a/i-0123456789abcdef0` → (zone, instance id). Fargate
/// and other providers' ids give nothing.
fn aws_provider_id(id: &str) -> (Option<String>, Option<String>) {
    let Some(rest) = id.strip_prefix("aws://") else { return (None, None) };
    let mut parts = rest.trim_start_matches('/').rsplit('/');
    let instance = parts.next().filter(|i| instance_id(i)).map(str::to_string);
    let zone = parts.next().filter(|z| plausible(z) && !z.is_empty()).map(str::to_string);
    (instance.as_ref().and(zone), instance)
}

/// `i-` and 8 or 17 hex digits.
fn instance_id(s: &str) -> bool {
    s.strip_prefix("i-")
        .is_some_and(|h| matches!(h.len(), 8 | 17) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A label value as Kubernetes allows it (63 characters of [A-Za-z0-9._-]).
/// Anything else never reaches a command line we print.
fn plausible(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_ecs_agent_gives_its_cluster_instance_and_region_never_the_account() {
        let arn = "arn:aws:ecs:eu-west-1:111122223333:container-instance/prod/1f73d099b914411ca9ff81633b7741dd";
        let n = NodeInfo::from_ecs(Some("prod"), Some(arn));
        assert_eq!(n.ecs_cluster.as_deref(), Some("prod"));
        assert_eq!(n.container_instance.as_deref(), Some("1f73d099b914411ca9ff81633b7741dd"));
        assert_eq!(n.region.as_deref(), Some("eu-west-1"));
        assert!(!serde_json::to_string(&n).unwrap().contains("111122223333"));
        // The old ARN format (no cluster in it) names the instance too.
        let old = "arn:aws:ecs:us-east-1:111122223333:container-instance/0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        let n = NodeInfo::from_ecs(None, Some(old));
        assert_eq!(n.container_instance.as_deref(), Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
        // Not an ECS container instance ARN, or a hostile value: nothing.
        assert_eq!(
            NodeInfo::from_ecs(Some("a b"), Some("arn:aws:iam::1:role/x")),
            NodeInfo::default()
        );
        assert_eq!(NodeInfo::from_ecs(Some("$(id)"), Some("nonsense")), NodeInfo::default());
    }

    #[test]
    fn a_nomad_node_gives_its_instance_zone_type_and_pool_from_its_fingerprint() {
        let attrs = labels(&[
            ("unique.platform.aws.instance-id", "i-0fedcba9876543210"),
            ("platform.aws.placement.availability-zone", "eu-west-1a"),
            ("platform.aws.instance-type", "m7g.large"),
            ("kernel.name", "linux"),
        ]);
        let n = NodeInfo::from_nomad(&attrs, Some("default"));
        assert_eq!(n.instance_id.as_deref(), Some("i-0fedcba9876543210"));
        assert_eq!(n.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(n.instance_type.as_deref(), Some("m7g.large"));
        assert_eq!(n.pool.as_deref(), Some("default"));
        assert_eq!(n.provisioner, None, "Nomad states no design");
        assert!(!n.blocks_pods_by_design(Some(1)));
        // What no AWS name could be never reaches a command.
        let bad = labels(&[
            ("unique.platform.aws.instance-id", "i-0abc; reboot"),
            ("platform.aws.instance-type", "$(id)"),
        ]);
        let n = NodeInfo::from_nomad(&bad, Some("pool with spaces"));
        assert_eq!(n, NodeInfo::default());
    }

    #[test]
    fn the_provisioner_and_its_pool_come_from_its_label() {
        let cases = [
            (vec![("karpenter.sh/nodepool", "default")], Some(Provisioner::Karpenter)),
            (vec![("karpenter.sh/provisioner-name", "old")], Some(Provisioner::Karpenter)),
            (vec![("eks.amazonaws.com/nodegroup", "ng-1")], Some(Provisioner::EksNodeGroup)),
            (vec![("alpha.eksctl.io/nodegroup-name", "ng-2")], Some(Provisioner::Eksctl)),
            // An eksctl-made managed node group: EKS's label names it.
            (
                vec![
                    ("alpha.eksctl.io/nodegroup-name", "ng-3"),
                    ("eks.amazonaws.com/nodegroup", "ng-3"),
                ],
                Some(Provisioner::EksNodeGroup),
            ),
            (vec![("kubernetes.io/os", "linux")], None),
            (vec![], None),
        ];
        for (kv, want) in cases {
            let n = NodeInfo::from_node(&labels(&kv), None);
            assert_eq!(n.provisioner, want, "{kv:?}");
            assert_eq!(n.pool.is_some(), want.is_some(), "{kv:?}");
        }
    }

    #[test]
    fn the_instance_and_where_it_runs() {
        let n = NodeInfo::from_node(
            &labels(&[
                ("topology.kubernetes.io/region", "eu-west-1"),
                ("node.kubernetes.io/instance-type", "m7g.large"),
            ]),
            Some("aws:///eu-west-1b/i-0123456789abcdef0"),
        );
        assert_eq!(n.instance_id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(n.zone.as_deref(), Some("eu-west-1b"));
        assert_eq!(n.region.as_deref(), Some("eu-west-1"));
        assert_eq!(n.instance_type.as_deref(), Some("m7g.large"));
        // The old 8-digit ids, and the beta labels.
        let n = NodeInfo::from_node(
            &labels(&[("failure-domain.beta.kubernetes.io/region", "us-east-1")]),
            Some("aws:///us-east-1a/i-0abc1234"),
        );
        assert_eq!(
            (n.instance_id.as_deref(), n.region.as_deref()),
            (Some("i-0abc1234"), Some("us-east-1"))
        );
    }

    #[test]
    fn odd_or_hostile_values_are_left_out() {
        for id in [
            "",
            "aws://",
            "aws:///",
            "gce://project/zone/name",
            "aws:///us-east-1a/fargate-ip-10-0-0-1",
            "aws:///us-east-1a/i-0123; rm -rf /",
            "aws:///us-east-1a/i-0123456789abcdef0/extra",
            "aws:///us-east-1a/i-0123456789ABCDEFG",
        ] {
            assert_eq!(NodeInfo::from_node(&BTreeMap::new(), Some(id)).instance_id, None, "{id}");
        }
        let n = NodeInfo::from_node(
            &labels(&[
                ("karpenter.sh/nodepool", "a pool; $(reboot)"),
                ("topology.kubernetes.io/region", &"x".repeat(64)),
            ]),
            None,
        );
        // Still Karpenter's, but nothing of the values.
        assert_eq!((n.provisioner, n.pool, n.region), (Some(Provisioner::Karpenter), None, None));
    }

    #[test]
    fn hop_limit_one_is_a_control_only_where_a_provisioner_set_it() {
        let karpenter = NodeInfo::from_node(&labels(&[("karpenter.sh/nodepool", "p")]), None);
        assert!(karpenter.blocks_pods_by_design(Some(1)));
        assert!(!karpenter.blocks_pods_by_design(Some(2)));
        assert!(!karpenter.blocks_pods_by_design(None));
        assert!(!NodeInfo::default().blocks_pods_by_design(Some(1)));
    }
}
