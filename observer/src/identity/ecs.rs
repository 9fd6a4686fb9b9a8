//! What the ECS agent says of this container instance: its cluster and
//! container instance, and the region in its ARN, from the agent's
//! introspection API (`GET http://127.0.0.1:51678/v1/metadata`: on the
//! host's loopback, no credentials, answered by every ECS agent). Asked
//! when the observer runs as an ECS task (the agent sets
//! `ECS_CONTAINER_METADATA_URI_V4` in every task), at start and every 10
//! minutes, as the Kubernetes Node and the Nomad node are read: the `node`
//! line carries it. ECS launches nothing with hop limit 1 on purpose, so
//! there is no provisioner; the lasting fix named for its tasks is the ECS
//! task role (diagnose/assess.rs).
use std::time::Duration;

use serde::Deserialize;

use super::http::{self, Transport};
use crate::model::NodeInfo;

/// The agent's introspection port (`ECS_AGENT_INTROSPECTION_PORT`'s default).
pub const INTROSPECTION: (&str, u16) = ("127.0.0.1", 51678);
const EVERY: Duration = Duration::from_secs(600);
const TIMEOUT: Duration = Duration::from_secs(2);

/// Whether this process runs as an ECS task.
pub fn configured(var: impl Fn(&str) -> Option<String>) -> bool {
    var("ECS_CONTAINER_METADATA_URI_V4").is_some_and(|v| !v.trim().is_empty())
}

/// `GET /v1/metadata` of the agent at `host:port`: what it says of this
/// container instance.
pub async fn this_instance(host: &str, port: u16) -> Result<NodeInfo, String> {
    let transport = Transport::Tcp { host: host.to_string(), port };
    let authority = format!("{host}:{port}");
    let req = http::Request {
        host: &authority,
        target: "/v1/metadata",
        headers: &[],
        timeout: TIMEOUT,
        max_reply: 64 << 10,
    };
    let reply = http::get(&transport, &req)
        .await
        .map_err(|e| format!("ECS agent introspection API at {authority}: {e}"))?;
    if reply.status != 200 {
        return Err(format!("ECS agent introspection API at {authority}: HTTP {}", reply.status));
    }
    let raw: RawMetadata = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("ECS agent introspection API at {authority}: {e}"))?;
    Ok(NodeInfo::from_ecs(raw.cluster.as_deref(), raw.container_instance_arn.as_deref()))
}

/// Read the agent now and every [`EVERY`] into `shared` (see
/// `watch_node_info`).
pub async fn watch_instance(shared: super::SharedNode) {
    super::watch_node_info(
        "ECS",
        EVERY,
        "the node line does without the ECS cluster (the observer needs the host network to reach the agent)",
        shared,
        || this_instance(INTROSPECTION.0, INTROSPECTION.1),
    )
    .await
}

/// The fields of `/v1/metadata` used here (the agent's version is not).
#[derive(Deserialize)]
struct RawMetadata {
    #[serde(rename = "Cluster")]
    cluster: Option<String>,
    #[serde(rename = "ContainerInstanceArn")]
    container_instance_arn: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::http::fake::{self, Serve};

    fn reply(status: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_bytes()
    }

    /// As an ECS agent 1.8x answers, on the host's loopback.
    #[tokio::test]
    async fn the_agent_names_the_cluster_the_instance_and_its_region() {
        let body = r#"{"Cluster":"payments-prod","ContainerInstanceArn":"arn:aws:ecs:eu-west-1:111122223333:container-instance/payments-prod/1f73d099b914411ca9ff81633b7741dd","Version":"Amazon ECS Agent - v1.86.3 (*0a6d2e2a)"}"#;
        let (port, seen) = fake::listen(Serve::Reply(reply("200 OK", body))).await;
        let info = this_instance("127.0.0.1", port).await.unwrap();
        assert_eq!(info.ecs_cluster.as_deref(), Some("payments-prod"));
        assert_eq!(info.container_instance.as_deref(), Some("1f73d099b914411ca9ff81633b7741dd"));
        assert_eq!(info.region.as_deref(), Some("eu-west-1"));
        assert_eq!(info.provisioner, None);
        assert!(seen.lock().unwrap()[0].starts_with("GET /v1/metadata HTTP/1.1\r\n"));
        // No agent there, or not the agent: said, not guessed.
        let (port, _) = fake::listen(Serve::Reply(reply("404 Not Found", "{}"))).await;
        let err = this_instance("127.0.0.1", port).await.unwrap_err();
        assert!(err.contains("HTTP 404"), "{err}");
    }

    #[test]
    fn runs_as_an_ecs_task_when_the_agent_gave_it_a_metadata_endpoint() {
        let with = |v: Option<&str>| configured(|_| v.map(str::to_string));
        assert!(with(Some("http://169.254.170.2/v4/1f73d099")));
        assert!(!with(Some(" ")) && !with(None));
    }
}
