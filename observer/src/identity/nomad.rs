//! Nomad allocation → job, task group and namespace, from the Nomad HTTP
//! API (`GET /v1/allocation/<id>`), for tasks whose cgroup path names only
//! the allocation and task (exec, raw_exec and java drivers) or whose
//! Docker labels are out of reach.
//!
//! Configured like the Nomad CLI, from the environment:
//! - `NOMAD_ADDR`: `http://host:port`, `https://host:port` or
//!   `unix:///path/to/socket` (the lookups are off without it);
//! - `NOMAD_TOKEN`: sent as `X-Nomad-Token` (never logged);
//! - `NOMAD_REGION`: sent as `?region=`;
//! - for https: `NOMAD_CACERT` (a PEM file) or `NOMAD_CAPATH` (a directory
//!   of PEM files) to trust instead of the system's roots,
//!   `NOMAD_CLIENT_CERT` + `NOMAD_CLIENT_KEY` for mutual TLS,
//!   `NOMAD_TLS_SERVER_NAME` to verify the server's certificate against
//!   another name than the address's host (Nomad's own certificates name
//!   `server.<region>.nomad` / `client.<region>.nomad`), and
//!   `NOMAD_SKIP_VERIFY` (true/1) to accept any certificate.
//!
//! An allocation's job and group never change, so answers are cached for
//! good (bounded, see `lookup.rs`); failures are retried later.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use serde::Deserialize;

use super::http::{self, Transport, snippet, truncate};

/// Bound on one whole request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What Nomad says about one allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    pub id: String,
    /// The job's name (`Job.Name`, else `JobID`).
    pub job: String,
    pub group: String,
    pub namespace: String,
}

/// A client for one Nomad agent. Each lookup opens its own connection.
#[derive(Clone)]
pub struct NomadClient {
    transport: Transport,
    /// `NOMAD_ADDR` as given, for messages (it holds no secret).
    addr: String,
    host: String,
    /// Path prefix of the address (`https://lb.example/nomad`), no trailing '/'.
    prefix: String,
    token: Option<String>,
    region: Option<String>,
    timeout: Duration,
}

impl fmt::Debug for NomadClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NomadClient")
            .field("addr", &self.addr)
            .field("transport", &self.transport)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("region", &self.region)
            .finish()
    }
}

/// TLS settings, as the Nomad CLI takes them.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    pub ca_cert: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub server_name: Option<String>,
    pub skip_verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    /// NOMAD_ADDR or a TLS setting is unusable.
    #[error("Nomad API configuration: {0}")]
    Config(String),
    /// The exchange failed (connect, TLS, timeout, malformed or oversized reply).
    #[error("Nomad API at {addr}: {source}")]
    Http { addr: String, source: http::Error },
    /// 403: the token may not read the allocation's job.
    #[error(
        "Nomad API at {addr}: allocation lookup forbidden (HTTP 403: {message}): the token in NOMAD_TOKEN \
         needs the read-job capability on the allocations' namespaces (see docs/deploy.md)"
    )]
    Forbidden { addr: String, message: String },
    /// Another status than 200, 404 and 403.
    #[error("Nomad API at {addr} answered HTTP {code}: {message}")]
    Status { addr: String, code: u16, message: String },
    /// The body is not an allocation.
    #[error("Nomad API at {addr} sent an invalid allocation: {source}")]
    Json { addr: String, source: serde_json::Error },
    /// The id would not be a safe path segment.
    #[error("invalid allocation id {:?}", truncate(.0, 80))]
    InvalidId(String),
}

impl NomadClient {
    /// From the process environment: `Ok(None)` when `NOMAD_ADDR` is not set.
    pub fn from_env() -> Result<Option<Self>, NomadError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From variables looked up by `var` (the environment, or a test's map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, NomadError> {
        let non_empty = |k: &str| var(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let Some(addr) = non_empty("NOMAD_ADDR") else { return Ok(None) };
        let tls = TlsSettings {
            ca_cert: non_empty("NOMAD_CACERT").map(PathBuf::from),
            ca_path: non_empty("NOMAD_CAPATH").map(PathBuf::from),
            client_cert: non_empty("NOMAD_CLIENT_CERT").map(PathBuf::from),
            client_key: non_empty("NOMAD_CLIENT_KEY").map(PathBuf::from),
            server_name: non_empty("NOMAD_TLS_SERVER_NAME"),
            skip_verify: non_empty("NOMAD_SKIP_VERIFY").is_some_and(|v| parse_bool(&v)),
        };
        if tls.skip_verify {
            tracing::warn!(
                addr = %addr,
                "NOMAD_SKIP_VERIFY: the Nomad API's certificate is not checked; anything on the way can answer as Nomad and name allocations. For testing only: set NOMAD_CACERT instead"
            );
        }
        let mut c = Self::new(&addr, &tls)?.with_token(non_empty("NOMAD_TOKEN"));
        c.region = non_empty("NOMAD_REGION");
        Ok(Some(c))
    }

    /// A client for `addr` (`http://`, `https://` or `unix://`).
    pub fn new(addr: &str, tls: &TlsSettings) -> Result<Self, NomadError> {
        let bad = |why: &str| NomadError::Config(format!("NOMAD_ADDR {addr:?}: {why}"));
        let (scheme, rest) =
            addr.split_once("://").ok_or_else(|| bad("expected http://, https:// or unix://"))?;
        let scheme = scheme.to_ascii_lowercase();
        let (transport, host, prefix) = if scheme == "unix" {
            if rest.is_empty() {
                return Err(bad("no socket path"));
            }
            (Transport::Unix(PathBuf::from(rest)), "127.0.0.1".to_string(), String::new())
        } else {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                None => (rest, ""),
            };
            if authority.is_empty() || authority.contains('@') {
                return Err(bad("expected host[:port]"));
            }
            let default_port = match scheme.as_str() {
                "http" => 80,
                "https" => 443,
                _ => return Err(bad("expected http://, https:// or unix://")),
            };
            let (host, port) =
                split_host_port(authority, default_port).ok_or_else(|| bad("bad host or port"))?;
            let transport = if scheme == "https" {
                let name = tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
                let server_name = ServerName::try_from(name.clone()).map_err(|_| {
                    NomadError::Config(format!(
                        "TLS server name {name:?} is not a DNS name or address"
                    ))
                })?;
                Transport::Tls {
                    host: host.clone(),
                    port,
                    server_name,
                    config: Arc::new(tls_config(tls)?),
                }
            } else {
                Transport::Tcp { host: host.clone(), port }
            };
            (transport, authority.to_string(), path.to_string())
        };
        Ok(NomadClient {
            transport,
            addr: addr.to_string(),
            host,
            prefix,
            token: None,
            region: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    #[cfg(test)]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `NOMAD_ADDR` as configured (no secret in it).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET /v1/allocation/<id>`. `Ok(None)` when Nomad does not know the
    /// allocation (404).
    pub async fn allocation(&self, id: &str) -> Result<Option<AllocInfo>, NomadError> {
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(NomadError::InvalidId(id.to_owned()));
        }
        let reply = self.get(&format!("/v1/allocation/{id}")).await?;
        self.allocation_reply(reply)
    }

    /// What Nomad says of the node this agent runs: its id from `GET
    /// /v1/agent/self`, then its AWS fingerprint and pool from `GET
    /// /v1/node/<id>` (the token needs `agent:read` and `node:read`).
    /// `Ok(None)` when the agent is no client (a server alone).
    pub async fn this_node(&self) -> Result<Option<crate::model::NodeInfo>, NomadError> {
        let agent: RawAgent = self.json(self.get("/v1/agent/self").await?)?;
        let Some(id) = agent.stats.and_then(|s| s.client).and_then(|c| c.node_id) else {
            return Ok(None);
        };
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(NomadError::InvalidId(id));
        }
        let node: RawNode = self.json(self.get(&format!("/v1/node/{id}")).await?)?;
        Ok(Some(crate::model::NodeInfo::from_nomad(&node.attributes, node.node_pool.as_deref())))
    }

    /// A 200's body as `T`; any other status as the error it is.
    fn json<T: serde::de::DeserializeOwned>(&self, reply: http::Reply) -> Result<T, NomadError> {
        let message = || truncate(String::from_utf8_lossy(&reply.body).trim(), 200);
        match reply.status {
            200 => serde_json::from_slice(&reply.body)
                .map_err(|source| NomadError::Json { addr: self.addr.clone(), source }),
            403 => Err(NomadError::Forbidden { addr: self.addr.clone(), message: message() }),
            code => Err(NomadError::Status { addr: self.addr.clone(), code, message: message() }),
        }
    }

    /// `GET path` (with `?region=` when one is set), with the token.
    async fn get(&self, path: &str) -> Result<http::Reply, NomadError> {
        let mut target = format!("{}{path}", self.prefix);
        if let Some(r) = &self.region {
            target.push_str("?region=");
            target.push_str(&query_escape(r));
        }
        let headers: Vec<(&str, &str)> =
            self.token.iter().map(|t| ("X-Nomad-Token", t.as_str())).collect();
        let req = http::Request {
            host: &self.host,
            target: &target,
            headers: &headers,
            timeout: self.timeout,
            max_reply: http::MAX_REPLY,
        };
        http::get(&self.transport, &req).await.map_err(|source| match source {
            // Never echo a header value back (the token).
            http::Error::BadHeader(_) => {
                NomadError::Config("NOMAD_TOKEN contains a line break".into())
            }
            source => NomadError::Http { addr: self.addr.clone(), source },
        })
    }

    /// What an allocation reply says: the allocation, None for 404, else
    /// why not. Pure, apart from the exchange (the fuzz target drives it).
    pub(crate) fn allocation_reply(
        &self,
        reply: http::Reply,
    ) -> Result<Option<AllocInfo>, NomadError> {
        let message = || truncate(String::from_utf8_lossy(&reply.body).trim(), 200);
        match reply.status {
            200 => {}
            404 => return Ok(None),
            403 => {
                return Err(NomadError::Forbidden { addr: self.addr.clone(), message: message() });
            }
            code => {
                return Err(NomadError::Status {
                    addr: self.addr.clone(),
                    code,
                    message: message(),
                });
            }
        }
        let raw: RawAlloc = serde_json::from_slice(&reply.body)
            .map_err(|source| NomadError::Json { addr: self.addr.clone(), source })?;
        if raw.id.is_empty() || raw.job_id.is_empty() {
            return Err(NomadError::Status {
                addr: self.addr.clone(),
                code: 200,
                message: format!("an allocation without ID or JobID: {}", snippet(&reply.body)),
            });
        }
        let job = raw.job.and_then(|j| j.name).filter(|n| !n.is_empty()).unwrap_or(raw.job_id);
        Ok(Some(AllocInfo {
            id: raw.id,
            job,
            group: raw.task_group,
            namespace: raw.namespace.filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into()),
        }))
    }
}

/// How often the node is read again: it changes rarely (a new pool).
const NODE_EVERY: Duration = Duration::from_secs(600);

/// Read what Nomad says of this node now and every [`NODE_EVERY`] into
/// `shared` (see `watch_node_info`).
pub async fn watch_node(client: NomadClient, shared: super::SharedNode) {
    super::watch_node_info(
        "Nomad",
        NODE_EVERY,
        "advice does without this node's instance id (the token needs agent:read and node:read)",
        shared,
        || {
            let client = client.clone();
            async move {
                client.this_node().await.map(Option::unwrap_or_default).map_err(|e| e.to_string())
            }
        },
    )
    .await
}

/// `GET /v1/agent/self`: only the client's node id.
#[derive(Deserialize)]
struct RawAgent {
    stats: Option<RawAgentStats>,
}

#[derive(Deserialize)]
struct RawAgentStats {
    client: Option<RawClientStats>,
}

#[derive(Deserialize)]
struct RawClientStats {
    node_id: Option<String>,
}

/// `GET /v1/node/<id>`: its fingerprint attributes and pool.
#[derive(Deserialize)]
struct RawNode {
    #[serde(rename = "Attributes", default)]
    attributes: std::collections::BTreeMap<String, String>,
    #[serde(rename = "NodePool")]
    node_pool: Option<String>,
}

/// The fields of `GET /v1/allocation/<id>` used here; the rest (the whole
/// job, task states, resources) is skipped while parsing.
#[derive(Deserialize)]
struct RawAlloc {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Namespace", default)]
    namespace: Option<String>,
    #[serde(rename = "JobID", default)]
    job_id: String,
    #[serde(rename = "TaskGroup", default)]
    task_group: String,
    #[serde(rename = "Job", default)]
    job: Option<RawJob>,
}

#[derive(Deserialize)]
struct RawJob {
    #[serde(rename = "Name", default)]
    name: Option<String>,
}

/// Go's strconv.ParseBool, which the Nomad CLI uses for NOMAD_SKIP_VERIFY.
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((format!("[{host}]"), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None, // a bare IPv6 address needs brackets
        None => Some((authority.to_string(), default_port)),
    }
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration the Nomad CLI's TLS variables describe.
pub fn tls_config(tls: &TlsSettings) -> Result<ClientConfig, NomadError> {
    let cfg = |m: String| NomadError::Config(m);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg(format!("TLS: {e}")))?;
    let builder = if tls.skip_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
    } else {
        let mut roots = RootCertStore::empty();
        if let Some(file) = &tls.ca_cert {
            add_pem_certs(&mut roots, file)?;
        } else if let Some(dir) = &tls.ca_path {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| cfg(format!("NOMAD_CAPATH {}: {e}", dir.display())))?;
            let mut files: Vec<PathBuf> =
                entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
            files.sort();
            for f in files {
                // Like Go's x509 pool from a directory: files that hold no
                // certificate are skipped.
                let _ = add_pem_certs(&mut roots, &f);
            }
        } else {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                let _ = roots.add(c);
            }
        }
        if roots.is_empty() {
            return Err(cfg(
                "no CA certificate to verify the Nomad server with: set NOMAD_CACERT (this image has no system CA bundle)"
                    .into(),
            ));
        }
        builder.with_root_certificates(roots)
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| cfg(format!("NOMAD_CLIENT_KEY {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| cfg(format!("client certificate: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(cfg("NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY go together".into())),
    }
}

fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, NomadError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| NomadError::Config(format!("{}: {e}", file.display())))?;
    if certs.is_empty() {
        return Err(NomadError::Config(format!("{}: no PEM certificate in it", file.display())));
    }
    Ok(certs)
}

fn add_pem_certs(roots: &mut RootCertStore, file: &Path) -> Result<(), NomadError> {
    for c in read_certs(file)? {
        roots.add(c).map_err(|e| NomadError::Config(format!("{}: {e}", file.display())))?;
    }
    Ok(())
}

/// NOMAD_SKIP_VERIFY: any certificate, any name. The handshake's
/// signatures are still checked (the peer holds the key it presents).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::Instant,
    };

    use tokio::net::{TcpListener, UnixListener};

    use super::*;
    use crate::identity::http::fake::{self, Seen, Serve};

    const ALLOC: &str = "5c3f8f2e-1b2a-4d7e-9f10-2a3b4c5d6e7f";
    const TOKEN: &str = "b7a1c2d3-0000-4000-8000-secret0token";

    /// `GET /v1/allocation/<id>` as a Nomad 1.8 server sends it, trimmed of
    /// most of the job and the task states.
    fn alloc_json() -> String {
        format!(
            r#"{{"ID":"{ALLOC}","Namespace":"payments","EvalID":"0b8f","Name":"billing.api[0]","NodeID":"9d2c","NodeName":"ip-10-0-1-17",
"JobID":"billing","Job":{{"ID":"billing","Name":"billing","Namespace":"payments","Type":"service","Datacenters":["dc1"],
"TaskGroups":[{{"Name":"api","Count":1,"Tasks":[{{"Name":"server","Driver":"exec","Config":{{"command":"/bin/api"}}}}]}}],
"Meta":null,"Version":3}},
"TaskGroup":"api","Resources":{{"CPU":100,"MemoryMB":128}},"DesiredStatus":"run","ClientStatus":"running",
"TaskStates":{{"server":{{"State":"running","Failed":false,"Restarts":0,"Events":[]}}}},"CreateIndex":42,"ModifyIndex":44}}"#
        )
    }

    /// A fake Nomad agent on 127.0.0.1; its port and the requests it saw.
    async fn serve(what: Serve) -> (u16, Seen) {
        fake::listen(what).await
    }

    fn reply(status: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_bytes()
    }

    fn client(port: u16) -> NomadClient {
        NomadClient::new(&format!("http://127.0.0.1:{port}"), &TlsSettings::default())
            .unwrap()
            .with_token(Some(TOKEN.into()))
            .with_timeout(Duration::from_millis(500))
    }

    fn want() -> AllocInfo {
        AllocInfo {
            id: ALLOC.into(),
            job: "billing".into(),
            group: "api".into(),
            namespace: "payments".into(),
        }
    }

    #[test]
    fn the_agent_and_node_replies_give_the_node_id_and_its_fingerprint() {
        let c = client(4646);
        let ok = |body: &str| http::Reply { status: 200, body: body.as_bytes().to_vec() };
        let agent: RawAgent = c
            .json(ok(r#"{"config":{"Region":"global"},"stats":{"client":{"node_id":"9d2c","known_servers":"1"}}}"#))
            .unwrap();
        assert_eq!(
            agent.stats.and_then(|s| s.client).and_then(|c| c.node_id).as_deref(),
            Some("9d2c")
        );
        // A server alone has no client stats: no node, no error.
        let server: RawAgent = c.json(ok(r#"{"stats":{"nomad":{}}}"#)).unwrap();
        assert!(server.stats.and_then(|s| s.client).is_none());
        let node: RawNode = c
            .json(ok(r#"{"ID":"9d2c","NodePool":"default","Attributes":{"unique.platform.aws.instance-id":"i-0fedcba9876543210"}}"#))
            .unwrap();
        let info = crate::model::NodeInfo::from_nomad(&node.attributes, node.node_pool.as_deref());
        assert_eq!(info.instance_id.as_deref(), Some("i-0fedcba9876543210"));
        let denied = http::Reply { status: 403, body: b"Permission denied".to_vec() };
        assert!(matches!(c.json::<RawNode>(denied), Err(NomadError::Forbidden { .. })));
    }

    /// The reply handling alone, as the fuzz target drives it.
    #[test]
    fn allocation_reply_by_status() {
        let c = client(4646);
        let reply = |status, body: &str| http::Reply { status, body: body.as_bytes().to_vec() };
        assert_eq!(c.allocation_reply(reply(200, &alloc_json())).unwrap(), Some(want()));
        assert_eq!(c.allocation_reply(reply(404, "alloc not found")).unwrap(), None);
        let err = c.allocation_reply(reply(403, "Permission denied")).unwrap_err();
        assert!(matches!(err, NomadError::Forbidden { .. }), "{err:?}");
        let err = c.allocation_reply(reply(200, r#"{"ID":""}"#)).unwrap_err();
        assert!(matches!(err, NomadError::Status { code: 200, .. }), "{err:?}");
        assert!(matches!(c.allocation_reply(reply(200, "[")), Err(NomadError::Json { .. })));
    }

    #[tokio::test]
    async fn found_with_the_token_as_header() {
        let (port, seen) = serve(Serve::Reply(reply("200 OK", &alloc_json()))).await;
        assert_eq!(client(port).allocation(ALLOC).await.unwrap(), Some(want()));
        let req = seen.lock().unwrap()[0].clone();
        assert!(req.starts_with(&format!("GET /v1/allocation/{ALLOC} HTTP/1.1\r\n")), "{req}");
        assert!(req.contains(&format!("\r\nX-Nomad-Token: {TOKEN}\r\n")), "{req}");
        assert!(req.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")), "{req}");
    }

    #[tokio::test]
    async fn no_token_no_header_and_job_id_when_the_job_is_absent() {
        let body = format!(
            r#"{{"ID":"{ALLOC}","JobID":"batch/periodic-1700000000","TaskGroup":"g","Job":null}}"#
        );
        let (port, seen) = serve(Serve::Reply(reply("200 OK", &body))).await;
        let c = client(port).with_token(None);
        let got = c.allocation(ALLOC).await.unwrap().unwrap();
        assert_eq!((got.job.as_str(), got.group.as_str()), ("batch/periodic-1700000000", "g"));
        assert_eq!(got.namespace, "default", "Nomad's default namespace when none is named");
        assert!(!seen.lock().unwrap()[0].to_ascii_lowercase().contains("x-nomad-token"));
    }

    #[tokio::test]
    async fn not_found_is_none() {
        let (port, _) = serve(Serve::Reply(reply("404 Not Found", "alloc not found"))).await;
        assert_eq!(client(port).allocation(ALLOC).await.unwrap(), None);
    }

    #[tokio::test]
    async fn forbidden_names_the_capability_and_never_the_token() {
        let (port, _) = serve(Serve::Reply(reply("403 Forbidden", "Permission denied"))).await;
        let err = client(port).allocation(ALLOC).await.unwrap_err();
        assert!(matches!(err, NomadError::Forbidden { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("HTTP 403: Permission denied") && msg.contains("read-job"), "{msg}");
        assert!(!msg.contains(TOKEN) && !format!("{err:?}").contains(TOKEN), "{msg}");
        assert!(!format!("{:?}", client(port)).contains(TOKEN), "Debug redacts the token");
    }

    #[tokio::test]
    async fn server_error_is_a_status_error() {
        let (port, _) =
            serve(Serve::Reply(reply("500 Internal Server Error", "rpc error: No cluster leader")))
                .await;
        let err = client(port).allocation(ALLOC).await.unwrap_err();
        assert!(matches!(err, NomadError::Status { code: 500, .. }), "{err:?}");
        assert!(err.to_string().contains("No cluster leader"), "{err}");
    }

    #[tokio::test]
    async fn garbage_json_and_garbage_http() {
        for body in ["{\"ID\": ", "[1,2]", "null", "{\"ID\":7}", "{}"] {
            let (port, _) = serve(Serve::Reply(reply("200 OK", body))).await;
            let err = client(port).allocation(ALLOC).await.unwrap_err();
            assert!(
                matches!(err, NomadError::Json { .. } | NomadError::Status { code: 200, .. }),
                "{body}: {err:?}"
            );
        }
        let (port, _) = serve(Serve::Reply(b"\x16\x03\x01 not http at all".to_vec())).await;
        let err = client(port).allocation(ALLOC).await.unwrap_err();
        assert!(
            matches!(err, NomadError::Http { source: http::Error::Protocol(_), .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn oversized_reply_is_refused() {
        let (port, _) = serve(Serve::Flood(http::MAX_REPLY + (1 << 20))).await;
        let err =
            client(port).with_timeout(Duration::from_secs(5)).allocation(ALLOC).await.unwrap_err();
        assert!(
            matches!(err, NomadError::Http { source: http::Error::TooLarge(_), .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn slow_server_times_out_within_the_timeout() {
        let (port, _) = serve(Serve::Silent).await;
        let start = Instant::now();
        let err = client(port)
            .with_timeout(Duration::from_millis(300))
            .allocation(ALLOC)
            .await
            .unwrap_err();
        assert!(matches!(err, NomadError::Http { source: http::Error::Timeout(_), .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_millis(1300), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = client(port).allocation(ALLOC).await.unwrap_err();
        assert!(matches!(err, NomadError::Http { source: http::Error::Connect(_), .. }), "{err:?}");
    }

    #[tokio::test]
    async fn unsafe_ids_are_refused_without_a_request() {
        let (port, seen) = serve(Serve::Reply(reply("200 OK", &alloc_json()))).await;
        for id in ["", "../../v1/jobs", "a b", "x?y", "5c3f8f2e-1b2a-4d7e-9f10-2a3b4c5d6e7f/../x"] {
            assert!(
                matches!(client(port).allocation(id).await, Err(NomadError::InvalidId(_))),
                "{id}"
            );
        }
        assert!(seen.lock().unwrap().is_empty());
    }

    fn tempdir() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "imds-nomad-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[tokio::test]
    async fn unix_socket_address() {
        let dir = tempdir();
        let sock = dir.join("nomad.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let seen = Seen::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(fake::handle(
                    s,
                    Serve::Reply(reply("200 OK", &alloc_json())),
                    s2.clone(),
                ));
            }
        });
        let vars = |k: &str| match k {
            "NOMAD_ADDR" => Some(format!("unix://{}", sock.display())),
            "NOMAD_TOKEN" => Some(TOKEN.to_string()),
            _ => None,
        };
        let c = NomadClient::from_vars(vars).unwrap().unwrap();
        assert_eq!(c.allocation(ALLOC).await.unwrap(), Some(want()));
        assert!(seen.lock().unwrap()[0].contains(&format!("X-Nomad-Token: {TOKEN}")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn addresses_as_the_cli_takes_them() {
        let none = |_: &str| None;
        assert!(NomadClient::from_vars(none).unwrap().is_none(), "off without NOMAD_ADDR");
        let tls = TlsSettings::default();
        let c = NomadClient::new("http://127.0.0.1:4646", &tls).unwrap();
        assert!(matches!(&c.transport, Transport::Tcp { host, port: 4646 } if host == "127.0.0.1"));
        let c = NomadClient::new("http://nomad.service.consul", &tls).unwrap();
        assert!(matches!(&c.transport, Transport::Tcp { port: 80, .. }));
        let c = NomadClient::new("http://[::1]:4646/", &tls).unwrap();
        assert!(matches!(&c.transport, Transport::Tcp { host, port: 4646 } if host == "[::1]"));
        let c = NomadClient::new("HTTP://lb.example:8080/nomad/", &tls).unwrap();
        assert_eq!(c.prefix, "/nomad");
        assert!(matches!(
            NomadClient::new("unix:///run/nomad.sock", &tls).unwrap().transport,
            Transport::Unix(_)
        ));
        for bad in [
            "127.0.0.1:4646",
            "ftp://x",
            "http://",
            "http://user:pw@host",
            "http://::1:4646",
            "unix://",
            "http://h:99999",
        ] {
            assert!(matches!(NomadClient::new(bad, &tls), Err(NomadError::Config(_))), "{bad}");
        }
        assert!(
            parse_bool("true")
                && parse_bool("1")
                && parse_bool("T")
                && !parse_bool("yes")
                && !parse_bool("0")
        );
    }

    #[tokio::test]
    async fn region_is_sent_as_a_query_parameter() {
        let (port, seen) = serve(Serve::Reply(reply("200 OK", &alloc_json()))).await;
        let vars = move |k: &str| match k {
            "NOMAD_ADDR" => Some(format!("http://127.0.0.1:{port}/prefix")),
            "NOMAD_REGION" => Some("eu west".to_string()),
            _ => None,
        };
        let c = NomadClient::from_vars(vars).unwrap().unwrap();
        assert!(c.allocation(ALLOC).await.unwrap().is_some());
        let req = seen.lock().unwrap()[0].clone();
        assert!(
            req.starts_with(&format!(
                "GET /prefix/v1/allocation/{ALLOC}?region=eu%20west HTTP/1.1\r\n"
            )),
            "{req}"
        );
    }

    // --- https ------------------------------------------------------------

    struct Pki {
        dir: PathBuf,
        ca: PathBuf,
        server_chain: Vec<CertificateDer<'static>>,
        server_key: PrivateKeyDer<'static>,
        ca_der: CertificateDer<'static>,
        client_cert: PathBuf,
        client_key: PathBuf,
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A CA, a server certificate for Nomad's own name
    /// (`server.global.nomad`, as `nomad tls cert create -server` makes it),
    /// and a client certificate, written as PEM files.
    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempdir();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let srv_key = KeyPair::generate().unwrap();
        let srv = CertificateParams::new(vec![
            "server.global.nomad".to_string(),
            "localhost".to_string(),
        ])
        .unwrap()
        .signed_by(&srv_key, &issuer)
        .unwrap();
        let cli_key = KeyPair::generate().unwrap();
        let cli = CertificateParams::new(vec!["cli.global.nomad".to_string()])
            .unwrap()
            .signed_by(&cli_key, &issuer)
            .unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let client_cert = dir.join("cli.pem");
        std::fs::write(&client_cert, cli.pem()).unwrap();
        let client_key = dir.join("cli-key.pem");
        std::fs::write(&client_key, cli_key.serialize_pem()).unwrap();
        Pki {
            ca,
            server_chain: vec![srv.der().clone()],
            server_key: PrivateKeyDer::try_from(srv_key.serialize_der()).unwrap(),
            ca_der: ca_cert.der().clone(),
            client_cert,
            client_key,
            dir,
        }
    }

    /// A fake Nomad agent behind TLS; `require_client` asks for a client
    /// certificate signed by the CA (`verify_https_client`).
    async fn serve_tls(pki: &Pki, require_client: bool) -> (u16, Seen) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client {
            let mut roots = RootCertStore::empty();
            roots.add(pki.ca_der.clone()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let cfg =
            builder.with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key()).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Seen::default();
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (acceptor, seen) = (acceptor.clone(), s2.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        fake::handle(tls, Serve::Reply(reply("200 OK", &alloc_json())), seen).await;
                    }
                });
            }
        });
        (port, seen)
    }

    fn https(
        port: u16,
        extra: &[(&'static str, String)],
    ) -> Result<Option<NomadClient>, NomadError> {
        let extra: Vec<(&'static str, String)> = extra.to_vec();
        NomadClient::from_vars(move |k| {
            if k == "NOMAD_ADDR" {
                return Some(format!("https://127.0.0.1:{port}"));
            }
            extra.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
    }

    #[tokio::test]
    async fn https_with_nomad_cacert_and_server_name() {
        let pki = pki();
        let (port, seen) = serve_tls(&pki, false).await;
        let ca = pki.ca.display().to_string();
        // The certificate names server.global.nomad, not 127.0.0.1.
        let c = https(port, &[("NOMAD_CACERT", ca.clone()), ("NOMAD_TOKEN", TOKEN.into())])
            .unwrap()
            .unwrap();
        let err = c.allocation(ALLOC).await.unwrap_err();
        assert!(matches!(err, NomadError::Http { source: http::Error::Tls(_), .. }), "{err:?}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "no request (and no token) sent to an unverified server"
        );
        let c = https(
            port,
            &[
                ("NOMAD_CACERT", ca),
                ("NOMAD_TLS_SERVER_NAME", "server.global.nomad".into()),
                ("NOMAD_TOKEN", TOKEN.into()),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.allocation(ALLOC).await.unwrap(), Some(want()));
        assert!(seen.lock().unwrap()[0].contains(&format!("X-Nomad-Token: {TOKEN}")));
    }

    #[tokio::test]
    async fn https_with_nomad_capath() {
        let pki = pki();
        let (port, _) = serve_tls(&pki, false).await;
        let c = https(
            port,
            &[
                ("NOMAD_CAPATH", pki.dir.display().to_string()),
                ("NOMAD_TLS_SERVER_NAME", "localhost".into()),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.allocation(ALLOC).await.unwrap(), Some(want()));
    }

    #[tokio::test]
    async fn https_untrusted_unless_skip_verify() {
        let pki = pki();
        let (port, _) = serve_tls(&pki, false).await;
        // Trusting another CA: refused.
        let other = self::pki();
        let c = https(
            port,
            &[
                ("NOMAD_CACERT", other.ca.display().to_string()),
                ("NOMAD_TLS_SERVER_NAME", "localhost".into()),
            ],
        )
        .unwrap()
        .unwrap();
        let err = c.allocation(ALLOC).await.unwrap_err();
        assert!(matches!(err, NomadError::Http { source: http::Error::Tls(_), .. }), "{err:?}");
        assert!(err.to_string().contains("TLS handshake failed"), "{err}");
        let c = https(port, &[("NOMAD_SKIP_VERIFY", "true".into())]).unwrap().unwrap();
        assert_eq!(c.allocation(ALLOC).await.unwrap(), Some(want()));
    }

    #[test]
    fn skip_verify_is_said() {
        #[derive(Clone, Default)]
        struct Log(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let w = log.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || w.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            https(1, &[]).unwrap().unwrap();
            assert!(log.0.lock().unwrap().is_empty(), "said without the variable");
            https(1, &[("NOMAD_SKIP_VERIFY", "true".into())]).unwrap().unwrap();
        });
        let said = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(said.contains("WARN") && said.contains("NOMAD_SKIP_VERIFY"), "{said}");
    }

    #[tokio::test]
    async fn https_mutual_tls() {
        let pki = pki();
        let (port, _) = serve_tls(&pki, true).await;
        let base = [
            ("NOMAD_CACERT", pki.ca.display().to_string()),
            ("NOMAD_TLS_SERVER_NAME", "localhost".into()),
        ];
        let c = https(port, &base).unwrap().unwrap();
        assert!(c.allocation(ALLOC).await.is_err(), "the server wants a client certificate");
        let mut with_cert = base.to_vec();
        with_cert.push(("NOMAD_CLIENT_CERT", pki.client_cert.display().to_string()));
        with_cert.push(("NOMAD_CLIENT_KEY", pki.client_key.display().to_string()));
        let c = https(port, &with_cert).unwrap().unwrap();
        assert_eq!(c.allocation(ALLOC).await.unwrap(), Some(want()));
    }

    #[test]
    fn bad_tls_settings_are_config_errors() {
        let pki = pki();
        let cert_only = [
            ("NOMAD_CACERT", pki.ca.display().to_string()),
            ("NOMAD_CLIENT_CERT", pki.client_cert.display().to_string()),
        ];
        assert!(matches!(https(1, &cert_only), Err(NomadError::Config(_))));
        let missing = [("NOMAD_CACERT", "/nonexistent/ca.pem".to_string())];
        let err = https(1, &missing).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let not_pem = [("NOMAD_CACERT", pki.client_key.display().to_string())];
        assert!(matches!(https(1, &not_pem), Err(NomadError::Config(_))));
    }
}
