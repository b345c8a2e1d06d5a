//! Content digests (`algorithm:encoded`) and streaming hashing.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::error::OciError;
use crate::quote;

/// A digest algorithm supported by berth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256, the canonical algorithm; 64 lowercase hex characters.
    Sha256,
    /// SHA-512; 128 lowercase hex characters.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm identifier as it appears in a digest string.
    pub fn as_str(&self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded hash.
    pub fn hex_len(&self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    /// Looks up a registered algorithm by identifier (`"sha256"`, `"sha512"`).
    pub fn from_name(name: &str) -> Option<DigestAlgorithm> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "sha512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated content digest, e.g. `sha256:e3b0c442…b855`.
///
/// Only registered algorithms ([`DigestAlgorithm`]) are representable, and
/// the encoded part is always lowercase hex of the right length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    /// Parses `algorithm:encoded` per the OCI image spec grammar.
    ///
    /// A well-formed digest with an unregistered algorithm yields
    /// [`OciError::UnsupportedDigestAlgorithm`]; anything malformed
    /// (including a registered algorithm with bad hex) yields
    /// [`OciError::InvalidDigest`].
    pub fn parse(s: &str) -> Result<Digest, OciError> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(OciError::InvalidDigest(format!(
                "{}: expected \"algorithm:encoded\"",
                quote(s)
            )));
        };
        if !is_valid_algorithm(algorithm) {
            return Err(OciError::InvalidDigest(format!(
                "{}: malformed algorithm component",
                quote(s)
            )));
        }
        if !is_valid_encoded(encoded) {
            return Err(OciError::InvalidDigest(format!(
                "{}: malformed encoded component",
                quote(s)
            )));
        }
        match DigestAlgorithm::from_name(algorithm) {
            Some(alg) => Digest::new(alg, encoded),
            None => Err(OciError::UnsupportedDigestAlgorithm(format!(
                "{} (supported: sha256, sha512)",
                quote(algorithm)
            ))),
        }
    }

    /// Builds a digest from an algorithm and its hex encoding, which must be
    /// lowercase hex of exactly [`DigestAlgorithm::hex_len`] characters.
    pub fn new(algorithm: DigestAlgorithm, hex: &str) -> Result<Digest, OciError> {
        if hex.len() != algorithm.hex_len() {
            return Err(OciError::InvalidDigest(format!(
                "{algorithm} digest must have {} hex characters, got {}",
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(OciError::InvalidDigest(format!(
                "{algorithm} digest {} must be lowercase hex",
                quote(hex)
            )));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The digest algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex encoding of the hash.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Computes the digest of `bytes` with `algorithm`.
    pub fn of(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finalize()
    }

    /// Computes the SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(DigestAlgorithm::Sha256, bytes)
    }

    /// Whether `bytes` hash to this digest (using this digest's algorithm).
    pub fn verify(&self, bytes: &[u8]) -> bool {
        Digest::of(self.algorithm, bytes) == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

string_serde!(Digest, "a digest string such as \"sha256:<64 hex>\"");

/// `algorithm ::= component (separator component)*`,
/// `component ::= [a-z0-9]+`, `separator ::= [+._-]`.
fn is_valid_algorithm(s: &str) -> bool {
    !s.is_empty()
        && s.split(['+', '.', '_', '-']).all(|component| {
            !component.is_empty() && component.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// `encoded ::= [a-zA-Z0-9=_-]+`.
fn is_valid_encoded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

#[derive(Clone)]
enum HasherState {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

/// Incremental hasher producing a [`Digest`].
#[derive(Clone)]
pub struct Hasher {
    state: HasherState,
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        let state = match algorithm {
            DigestAlgorithm::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => HasherState::Sha512(sha2::Sha512::new()),
        };
        Hasher { state }
    }

    /// Feeds more data into the hash.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            HasherState::Sha256(h) => h.update(data),
            HasherState::Sha512(h) => h.update(data),
        }
    }

    /// Consumes the hasher and returns the digest of everything fed to it.
    pub fn finalize(self) -> Digest {
        let (algorithm, hex) = match self.state {
            HasherState::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            HasherState::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self.state {
            HasherState::Sha256(_) => DigestAlgorithm::Sha256,
            HasherState::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const EMPTY_SHA512: &str = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
    const ABC_SHA512: &str = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

    #[test]
    fn parse_valid_sha256() {
        let s = format!("sha256:{EMPTY_SHA256}");
        let d = Digest::parse(&s).unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(d.hex(), EMPTY_SHA256);
        assert_eq!(d.to_string(), s);
        assert_eq!(s.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn parse_valid_sha512() {
        let s = format!("sha512:{EMPTY_SHA512}");
        let d = Digest::parse(&s).unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(d.hex(), EMPTY_SHA512);
        assert_eq!(d.to_string(), s);
    }

    fn assert_invalid(s: &str) {
        match Digest::parse(s) {
            Err(OciError::InvalidDigest(_)) => {}
            other => panic!("{s:?}: expected InvalidDigest, got {other:?}"),
        }
    }

    #[test]
    fn parse_rejects_malformed() {
        assert_invalid("");
        assert_invalid(":");
        assert_invalid(EMPTY_SHA256); // missing colon
        assert_invalid(&format!("sha256:{}", EMPTY_SHA256.to_uppercase()));
        assert_invalid(&format!("sha256:{}", &EMPTY_SHA256[..63])); // short
        assert_invalid(&format!("sha256:{EMPTY_SHA256}0")); // long
        assert_invalid(&format!("sha256:{}", &EMPTY_SHA512)); // wrong length
        assert_invalid(&format!("sha512:{EMPTY_SHA256}"));
        assert_invalid("sha256:");
        assert_invalid(&format!(":{EMPTY_SHA256}"));
        assert_invalid(&format!("SHA256:{EMPTY_SHA256}"));
        assert_invalid(&format!("sha256::{EMPTY_SHA256}"));
        assert_invalid(&format!(" sha256:{EMPTY_SHA256}"));
        assert_invalid(&format!("sha256:{EMPTY_SHA256} "));
        assert_invalid("sha256:zzzz");
        assert_invalid("md5:abc!");
        assert_invalid("sha+:abc");
        assert_invalid("+sha:abc");
        assert_invalid("sha..256:abc");
        assert_invalid("not a digest");
        // non-hex but grammar-valid encoded for a registered algorithm
        assert_invalid(&format!("sha256:{}", "g".repeat(64)));
    }

    #[test]
    fn parse_unknown_algorithm_is_unsupported() {
        for s in [
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha384:abc",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
            "blake3:abcDEF=_-",
        ] {
            match Digest::parse(s) {
                Err(e @ OciError::UnsupportedDigestAlgorithm(_)) => {
                    // One answer wherever a digest appears: invalid for this registry.
                    assert_eq!(e.code(), crate::ErrorCode::DigestInvalid)
                }
                other => panic!("{s:?}: expected Unsupported, got {other:?}"),
            }
        }
    }

    #[test]
    fn new_validates() {
        assert!(Digest::new(DigestAlgorithm::Sha256, EMPTY_SHA256).is_ok());
        assert!(Digest::new(DigestAlgorithm::Sha512, EMPTY_SHA256).is_err());
        assert!(Digest::new(DigestAlgorithm::Sha256, &EMPTY_SHA256.to_uppercase()).is_err());
        assert!(Digest::new(DigestAlgorithm::Sha256, "").is_err());
    }

    #[test]
    fn known_vectors() {
        assert_eq!(Digest::sha256_of(b"").hex(), EMPTY_SHA256);
        assert_eq!(Digest::sha256_of(b"abc").hex(), ABC_SHA256);
        assert_eq!(Digest::of(DigestAlgorithm::Sha512, b"").hex(), EMPTY_SHA512);
        assert_eq!(Digest::of(DigestAlgorithm::Sha512, b"abc").hex(), ABC_SHA512);
        assert!(Digest::sha256_of(b"abc").verify(b"abc"));
        assert!(!Digest::sha256_of(b"abc").verify(b"abd"));
    }

    #[test]
    fn hasher_incremental_matches_one_shot() {
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let mut h = Hasher::new(alg);
            assert_eq!(h.algorithm(), alg);
            h.update(b"a");
            let snapshot = h.clone();
            h.update(b"bc");
            assert_eq!(h.finalize(), Digest::of(alg, b"abc"));
            assert_eq!(snapshot.finalize(), Digest::of(alg, b"a"));
        }
        let h = Hasher::new(DigestAlgorithm::Sha256);
        assert_eq!(h.finalize().hex(), EMPTY_SHA256);
    }

    #[test]
    fn algorithm_metadata() {
        assert_eq!(DigestAlgorithm::Sha256.as_str(), "sha256");
        assert_eq!(DigestAlgorithm::Sha512.as_str(), "sha512");
        assert_eq!(DigestAlgorithm::Sha256.hex_len(), 64);
        assert_eq!(DigestAlgorithm::Sha512.hex_len(), 128);
        assert_eq!(DigestAlgorithm::from_name("sha512"), Some(DigestAlgorithm::Sha512));
        assert_eq!(DigestAlgorithm::from_name("md5"), None);
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let d = Digest::sha256_of(b"abc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"sha256:{ABC_SHA256}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:nope\"").is_err());
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }

    #[test]
    fn error_message_truncates_long_input() {
        let long = "x".repeat(10_000);
        let err = Digest::parse(&long).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
    }
}
