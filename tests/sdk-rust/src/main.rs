//! Lab client that runs the real AWS SDK for Rust IMDS credentials provider
//! (`aws_config::imds::credentials::ImdsCredentialsProvider`) once.
//!
//! It exists so lab tests can show what the real SDK does when the IMDSv2
//! token reply is lost (see shared/design/imds-hop-limit.md, "What real
//! clients do"): the SDK's default IMDS timeouts and retry policy are left as
//! they are. Only the IMDS provider is used, never the default credential
//! chain, and the region is fixed so nothing else is looked up.
//!
//! Usage: aws-sdk-rust-client [--endpoint URL]
//!
//! Without `--endpoint` the SDK resolves the endpoint itself, from
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (then the profile file, then the
//! endpoint mode, then `http://169.254.169.254`). With it, the URL is passed
//! explicitly to the IMDS client builder.
//!
//! Prints one JSON line to stdout:
//! `{"t_start":…,"t_end":…,"outcome":"ok"|"error","error_kind":…,"key_id_len":…}`
//! (unix seconds as floats; `error_kind` is "" on success and a short class
//! such as `not_loaded/dispatch_failure/connector_timeout` on failure;
//! `key_id_len` is 0 on failure). Never prints a token or credential value,
//! nor any SDK error message (those can embed raw IMDS replies).
//!
//! Exit status: 0 credentials obtained, 3 not obtained, 2 bad usage.

use std::{
    error::Error,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use aws_config::{
    Region,
    imds::{
        client::error::{ImdsError, TokenError},
        credentials::ImdsCredentialsProvider,
    },
    provider_config::ProviderConfig,
};
use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError};
use aws_smithy_runtime_api::client::{
    orchestrator::HttpResponse,
    result::{ConnectorError, SdkError},
};
use serde_json::json;

const USAGE: &str = "usage: aws-sdk-rust-client [--endpoint http://169.254.169.254]";
const REGION: &str = "us-east-1";
const DISABLED_ENV: &str = "AWS_EC2_METADATA_DISABLED";
const EXIT_NO_CREDENTIALS: u8 = 3;
const EXIT_USAGE: u8 = 2;

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut endpoint = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--endpoint" => {
                let v = args.next().ok_or("--endpoint needs a URL")?;
                endpoint = Some(v);
            }
            s if s.starts_with("--endpoint=") => {
                endpoint = Some(s["--endpoint=".len()..].to_string());
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if matches!(endpoint.as_deref(), Some("")) {
        return Err("--endpoint needs a URL".into());
    }
    Ok(endpoint)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A short, secret-free class for a credentials error: the variant names
/// found along its source chain, never their messages.
fn error_kind(err: &CredentialsError) -> String {
    let mut parts: Vec<String> = vec![
        match err {
            CredentialsError::CredentialsNotLoaded(_) => "not_loaded",
            CredentialsError::ProviderTimedOut(_) => "provider_timed_out",
            CredentialsError::InvalidConfiguration(_) => "invalid_configuration",
            CredentialsError::ProviderError(_) => "provider_error",
            CredentialsError::Unhandled(_) => "unhandled",
            _ => "credentials_error",
        }
        .to_string(),
    ];
    let mut source: Option<&(dyn Error + 'static)> = err.source();
    let mut depth = 0;
    while let Some(e) = source {
        if let Some(imds) = e.downcast_ref::<ImdsError>() {
            parts.push(match imds {
                ImdsError::FailedToLoadToken(_) => "failed_to_load_token".into(),
                ImdsError::ErrorResponse(r) => {
                    format!("error_response_{}", r.response().status().as_u16())
                }
                ImdsError::IoError(_) => "io_error".into(),
                ImdsError::Unexpected(_) => "unexpected".into(),
                _ => "imds_error".into(),
            });
        } else if let Some(sdk) = e.downcast_ref::<SdkError<TokenError, HttpResponse>>() {
            parts.push(sdk_error_kind(sdk, "token"));
        } else if let Some(sdk) = e.downcast_ref::<SdkError<ImdsError, HttpResponse>>() {
            parts.push(sdk_error_kind(sdk, "imds"));
        } else if let Some(c) = e.downcast_ref::<ConnectorError>() {
            parts.push(
                if c.is_timeout() {
                    "connector_timeout"
                } else if c.is_io() {
                    "connector_io"
                } else if c.is_user() {
                    "connector_user"
                } else {
                    "connector_other"
                }
                .into(),
            );
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            parts.push(format!("io_{:?}", io.kind()).to_lowercase());
        }
        depth += 1;
        if depth > 16 {
            break;
        }
        source = e.source();
    }
    parts.join("/")
}

fn sdk_error_kind<E, R>(e: &SdkError<E, R>, what: &str) -> String {
    match e {
        SdkError::ConstructionFailure(_) => "construction_failure".into(),
        SdkError::TimeoutError(_) => "timeout_error".into(),
        SdkError::DispatchFailure(_) => "dispatch_failure".into(),
        SdkError::ResponseError(_) => "response_error".into(),
        SdkError::ServiceError(_) => format!("{what}_service_error"),
        _ => "sdk_error".into(),
    }
}

fn build_provider(endpoint: Option<&str>) -> Result<ImdsCredentialsProvider, String> {
    let config = ProviderConfig::default().with_region(Some(Region::new(REGION)));
    // Without the SDK's default HTTPS client compiled in, hand it the same
    // hyper connector built without TLS; the SDK applies its IMDS connect and
    // read timeouts to it exactly as it would to the default client.
    #[cfg(not(feature = "sdk-default-https-client"))]
    let config = config.with_http_client(aws_smithy_http_client::Builder::new().build_http());

    let mut imds = aws_config::imds::Client::builder().configure(&config);
    if let Some(url) = endpoint {
        imds = imds.endpoint(url).map_err(|_| format!("--endpoint {url}: not a valid URI"))?;
    }
    Ok(ImdsCredentialsProvider::builder().configure(&config).imds_client(imds.build()).build())
}

fn main() -> ExitCode {
    let endpoint = match parse_args(std::env::args().skip(1)) {
        Ok(e) => e,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("aws-sdk-rust-client: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // The provider refuses to run when this is "true"; the lab always wants
    // the real IMDS attempt. Removed before any thread exists.
    std::env::remove_var(DISABLED_ENV);

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aws-sdk-rust-client: tokio runtime: {e}");
            return ExitCode::from(EXIT_NO_CREDENTIALS);
        }
    };

    let provider = match build_provider(endpoint.as_deref()) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("aws-sdk-rust-client: {msg}");
            eprintln!("{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let t_start = unix_now();
    let result = runtime.block_on(async { provider.provide_credentials().await });
    let t_end = unix_now();

    let (outcome, kind, key_id_len, code) = match &result {
        Ok(creds) => ("ok", String::new(), creds.access_key_id().len(), 0),
        Err(err) => ("error", error_kind(err), 0, EXIT_NO_CREDENTIALS),
    };
    let line = json!({
        "t_start": t_start,
        "t_end": t_end,
        "outcome": outcome,
        "error_kind": kind,
        "key_id_len": key_id_len,
    });
    println!("{line}");
    if result.is_err() {
        eprintln!("aws-sdk-rust-client: no credentials after {:.3} s ({kind})", t_end - t_start);
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> impl Iterator<Item = String> + '_ {
        s.split_whitespace().map(String::from)
    }

    #[test]
    fn parses_endpoint() {
        assert_eq!(parse_args(args("")).unwrap(), None);
        assert_eq!(
            parse_args(args("--endpoint http://127.0.0.1:1")).unwrap().as_deref(),
            Some("http://127.0.0.1:1")
        );
        assert_eq!(
            parse_args(args("--endpoint=http://[fd00:ec2::254]")).unwrap().as_deref(),
            Some("http://[fd00:ec2::254]")
        );
        assert!(parse_args(args("--endpoint")).is_err());
        assert!(parse_args(args("--endpoint=")).is_err());
        assert!(parse_args(args("--profile rust")).is_err());
    }

    #[test]
    fn not_loaded_kind_has_no_message() {
        let err = CredentialsError::not_loaded("secret-looking message AKIA...");
        assert_eq!(error_kind(&err), "not_loaded");
    }
}
