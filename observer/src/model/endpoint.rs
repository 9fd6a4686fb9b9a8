//! A metadata endpoint: its address and the TCP port its service listens
//! on. Only TCP to that port (and ICMP errors about it) is metadata traffic;
//! anything else sent to the address costs the observer only the filter.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

/// IMDS, the ECS task-credentials endpoint and EKS Pod Identity all serve
/// HTTP on port 80.
pub const DEFAULT_PORT: u16 = 80;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl FromStr for Endpoint {
    type Err = String;

    /// `169.254.169.254`, `169.254.169.254:80`, `fd00:ec2::254`,
    /// `[fd00:ec2::254]:80`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(Endpoint { addr, port: DEFAULT_PORT });
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if let Ok(addr) = inner.parse::<IpAddr>() {
                return Ok(Endpoint { addr, port: DEFAULT_PORT });
            }
        }
        match s.parse::<SocketAddr>() {
            Ok(sa) if sa.port() != 0 => Ok(Endpoint { addr: sa.ip(), port: sa.port() }),
            Ok(_) => Err(format!("{s}: port 0 is no service port")),
            Err(_) => Err(format!(
                "{s}: expected an IP address, IP:PORT or [IPv6]:PORT (e.g. 169.254.169.254:80)"
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", SocketAddr::new(self.addr, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_a_port() {
        let p = |s: &str| s.parse::<Endpoint>().map(|e| e.to_string());
        assert_eq!(p("169.254.169.254"), Ok("169.254.169.254:80".into()));
        assert_eq!(p("169.254.170.2:8080"), Ok("169.254.170.2:8080".into()));
        assert_eq!(p("fd00:ec2::254"), Ok("[fd00:ec2::254]:80".into()));
        assert_eq!(p("[fd00:ec2::254]"), Ok("[fd00:ec2::254]:80".into()));
        assert_eq!(p("[fd00:ec2::23]:81"), Ok("[fd00:ec2::23]:81".into()));
        assert!(p("169.254.169.254:0").unwrap_err().contains("port 0"));
        assert!(p("metadata.google.internal").unwrap_err().contains("expected an IP address"));
        assert!(p("169.254.169.254:99999").is_err());
    }
}
