//! API key format, generation and verification.
//!
//! A key reads `e_<envId>_<keyId>_<secret>`: the fixed prefix lets secret scanners recognise leaked keys, the two
//! ids let the sidecar find the stored record in O(1) without scanning, and the secret carries 190 bits of
//! randomness. The store keeps only a SHA-256 hash of the whole key; because the secret is random and long, a
//! fast hash is as strong as a slow password hash here and keeps verification off the request's critical path.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of the random part: 32 characters of base62 is 190 bits.
pub const SECRET_LEN: usize = 32;
/// Length of generated key ids and environment ids.
pub const ID_LEN: usize = 12;
/// The longest input the parser even looks at, so that a megabyte of garbage costs nothing.
const MAX_TOKEN_LEN: usize = 2 + 32 + 1 + 32 + 1 + 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the bearer token is not an orgkeeper API key (expected e_<envId>_<keyId>_<secret>)")]
    Malformed,
}

/// A complete API key. It is secret: `Debug` redacts it and there is no `Display`; read it with [`Self::expose`].
#[derive(Clone)]
pub struct ApiKeyToken {
    env_id: String,
    key_id: String,
    whole: SecretString,
}

impl fmt::Debug for ApiKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyToken(e_{}_{}_[redacted])", self.env_id, self.key_id)
    }
}

impl ApiKeyToken {
    /// A fresh key for an environment, with a random key id and secret.
    pub fn generate(env_id: &str) -> Self {
        let key_id = new_id();
        let mut rng = rand::rng();
        let secret: String = (0..SECRET_LEN).map(|_| rng.sample(Alphanumeric) as char).collect();
        let whole = format!("e_{env_id}_{key_id}_{secret}");
        ApiKeyToken {
            env_id: env_id.to_owned(),
            key_id,
            whole: whole.into(),
        }
    }

    /// Parses a presented key without allocating more than the key itself; any deviation is `Malformed`.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let (env_id, key_id) = split_token(text).ok_or(TokenError::Malformed)?;
        Ok(ApiKeyToken {
            env_id: env_id.to_owned(),
            key_id: key_id.to_owned(),
            whole: text.into(),
        })
    }

    /// The environment and key ids of a key's text, borrowed from it, or `None` if it is not shaped
    /// like a key: what checking a presented key needs before its hash is compared.
    pub fn ids(text: &str) -> Option<(&str, &str)> {
        split_token(text)
    }

    pub fn env_id(&self) -> &str {
        &self.env_id
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The plaintext key, for the one place it may go: the Secret.
    pub fn expose(&self) -> &str {
        self.whole.expose_secret()
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(self.expose())
    }
}

/// Splits `e_<envId>_<keyId>_<secret>` into its ids, checking every character.
fn split_token(text: &str) -> Option<(&str, &str)> {
    if text.len() > MAX_TOKEN_LEN {
        return None;
    }
    let rest = text.strip_prefix("e_")?;
    let mut parts = rest.splitn(3, '_');
    let (env_id, key_id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let valid_id =
        |id: &str| (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let valid_secret = (SECRET_LEN..=64).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (valid_id(env_id) && valid_id(key_id) && valid_secret).then_some((env_id, key_id))
}

/// A new random identifier of lowercase letters and digits, for environments and keys.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..ID_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The SHA-256 of a key, as the store keeps it (lower-case hex).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.fingerprint())
    }
}

impl KeyHash {
    pub fn of(token: &str) -> Self {
        KeyHash(Sha256::digest(token.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(KeyHash(bytes))
    }

    /// Compares in constant time, so response timing reveals nothing about how much of a guess was right.
    pub fn verifies(&self, token: &ApiKeyToken) -> bool {
        self.verifies_text(token.expose())
    }

    /// [`KeyHash::verifies`] for a key's text as presented.
    pub fn verifies_text(&self, text: &str) -> bool {
        self.0.ct_eq(&KeyHash::of(text).0).into()
    }

    /// A short public identifier of the key (safe for statuses and logs): it reveals nothing usable.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape_and_parse_back() {
        let token = ApiKeyToken::generate("env0000001");
        let text = token.expose();
        assert!(text.starts_with("e_env0000001_"));
        let parsed = ApiKeyToken::parse(text).unwrap();
        assert_eq!(parsed.env_id(), "env0000001");
        assert_eq!(parsed.key_id(), token.key_id());
        assert_eq!(parsed.key_id().len(), ID_LEN);
        assert_eq!(text.rsplit('_').next().unwrap().len(), SECRET_LEN);
    }

    #[test]
    fn two_keys_never_share_a_secret() {
        let a = ApiKeyToken::generate("e1");
        let b = ApiKeyToken::generate("e1");
        assert_ne!(a.expose(), b.expose());
        assert_ne!(a.key_id(), b.key_id());
    }

    #[test]
    fn the_hash_verifies_its_own_key_and_no_other() {
        let token = ApiKeyToken::generate("e1");
        let hash = token.hash();
        assert!(hash.verifies(&token));
        let other = ApiKeyToken::generate("e1");
        assert!(!hash.verifies(&other));
        let roundtrip = KeyHash::from_hex(&hash.to_hex()).unwrap();
        assert!(roundtrip.verifies(&token));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let secret = "A".repeat(SECRET_LEN);
        for bad in [
            String::new(),
            "e_".into(),
            format!("x_env_key_{secret}"),
            format!("e_env_key_{}", "A".repeat(SECRET_LEN - 1)),
            format!("e_ENV_key_{secret}"),
            format!("e__key_{secret}"),
            format!("e_env_key_{secret}!"),
            format!("e_env_key_{secret}_extra"),
            format!("e_env_key_{}", "A".repeat(1_000_000)),
            "Bearer something".into(),
        ] {
            assert_eq!(
                ApiKeyToken::parse(&bad).unwrap_err(),
                TokenError::Malformed,
                "{:.40}",
                bad
            );
        }
        assert!(ApiKeyToken::parse(&format!("e_env_key_{secret}")).is_ok());
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let token = ApiKeyToken::generate("e1");
        let secret = token.expose().rsplit('_').next().unwrap().to_owned();
        let printed = format!("{token:?} {:?}", token.hash());
        assert!(!printed.contains(&secret));
        assert!(printed.contains(token.key_id()));
    }
}
