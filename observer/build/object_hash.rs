// The eBPF object's hash that `--version` names, computed by build.rs
// (which includes this file) over the object it embeds, and unit-tested by
// the library (lib.rs includes it under test) against the embedded bytes.
// Two builds with the same hash load the same kernel programs, whatever
// their commits say: the pinned nightly and bpf-linker should make it the
// same for the same source.
use sha2::{Digest, Sha256};

/// Hex digits of the SHA-256 kept: 64 bits, enough to tell builds apart.
pub const SHORT: usize = 16;

/// `sha256:` and the first [`SHORT`] hex digits of the SHA-256 of `object`.
pub fn object_hash(object: &[u8]) -> String {
    let digest = Sha256::digest(object);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{}", &hex[..SHORT])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_the_short_sha256() {
        // FIPS 180-2's "abc" vector: ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(object_hash(b"abc"), "sha256:ba7816bf8f01cfea");
        assert_eq!(object_hash(b""), "sha256:e3b0c44298fc1c14");
    }
}
