//! TCP flags: one type from the decoder to the diagnosis, written as the
//! event stream has always written them (`"SYN|ACK"`).
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

bitflags::bitflags! {
    /// The low 8 flag bits of a TCP header (CWR..FIN).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct TcpFlags: u8 {
        const FIN = 0x01;
        const SYN = 0x02;
        const RST = 0x04;
        const PSH = 0x08;
        const ACK = 0x10;
        const URG = 0x20;
        const ECE = 0x40;
        const CWR = 0x80;
    }
}

impl TcpFlags {
    /// `"SYN|ACK"` → flags; names it does not know are ignored.
    pub fn parse(s: &str) -> Self {
        s.split('|').filter_map(|f| Self::from_name(f.trim())).fold(Self::empty(), |a, b| a | b)
    }

    /// A SYN that is not a SYN|ACK: the client's connect.
    pub fn is_syn(self) -> bool {
        self.contains(Self::SYN) && !self.contains(Self::ACK)
    }
}

/// Names joined by `|`, lowest bit first: `"SYN"`, `"SYN|ACK"`, `"PSH|ACK"`.
/// No flags: the empty string.
impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, _)) in self.iter_names().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TcpFlags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::TcpFlags;

    #[test]
    fn names_round_trip_lowest_bit_first() {
        let cases = [
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::SYN | TcpFlags::ACK, "SYN|ACK"),
            (TcpFlags::PSH | TcpFlags::ACK, "PSH|ACK"),
            (TcpFlags::FIN | TcpFlags::ACK, "FIN|ACK"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::RST | TcpFlags::ACK, "RST|ACK"),
            (TcpFlags::empty(), ""),
            (TcpFlags::all(), "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"),
        ];
        for (flags, text) in cases {
            assert_eq!(flags.to_string(), text);
            assert_eq!(TcpFlags::parse(text), flags);
            assert_eq!(serde_json::to_string(&flags).unwrap(), format!("\"{text}\""));
        }
        assert_eq!(TcpFlags::parse("ACK | bogus|SYN"), TcpFlags::SYN | TcpFlags::ACK);
        assert!(TcpFlags::SYN.is_syn() && !(TcpFlags::SYN | TcpFlags::ACK).is_syn());
    }
}
