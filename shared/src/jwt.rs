//! JSON Web Tokens the way SocketCluster signs them, verified more strictly than Node does.
//!
//! Layout of this module:
//! - [`JwtAlgorithm`], [`JwtKeys`]: the one algorithm a node uses and its keys, built once from
//!   configuration (an optional `kid` → key set serves key rotation).
//! - [`TokenVerifier`]: decides whether a presented token authenticates a socket.
//! - [`TokenSigner`]: issues tokens byte-identical to what `jsonwebtoken`/ag-auth would issue.
//! - [`AuthTokenError`]: a refusal, carrying SocketCluster's wire name, message and extra fields.
//! - [`JwtKeyError`], [`TokenSignError`]: configuration and signing faults (ours, never the peer's).
//!
//! The clock is always an argument (`now_unix_secs`), so tests, the handshake and the per-socket
//! expiry timer all judge a token against the same time.
//!
//! Verification parses the token and checks the claims itself and uses the `jsonwebtoken` crate
//! only for the signature primitives (`crypto::sign` / `crypto::verify`). The crate's `decode` is
//! not used on purpose: it reads the system clock, accepts a token whose `exp` equals now (Node
//! refuses it), defaults to 60 s of leeway, skips `nbf` unless told, and lets a missing `exp`
//! through unless `required_spec_claims` is set. Doing the checks here overrides all of those
//! defaults in one visible place instead of relying on each `Validation` field being set right.
//!
//! Nothing here decodes a token without verifying it: claims only leave [`TokenVerifier::verify`]
//! after the signature and the time claims passed.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{crypto, Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Clock tolerance for `exp` and `nbf` when none is configured (`--jwt-leeway`).
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// The largest accepted clock tolerance: beyond a minute an expired token is simply still valid.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(60);

/// jsonwebtoken (Node) refuses to sign with RSA keys under 2048 bits; so do we.
const MIN_RSA_SIGNING_MODULUS_BYTES: usize = 256;

/// Bytes signed and verified once at start-up to prove a key pair works and belongs together.
const KEY_PROBE_MESSAGE: &[u8] = b"sockhive key probe";

/// The signature algorithm of a node. Exactly one per node: a token must name it in its `alg`
/// header, so `none`, key confusion (HS256 against an RSA key) and algorithm downgrades are refused
/// without looking at the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret: SocketCluster's default (`authKey`).
    #[default]
    #[serde(rename = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256: the master signs, workers need only the public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256 (64-byte JOSE `R‖S` signatures).
    #[serde(rename = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    /// The exact `alg` header value, case included, that tokens of this algorithm carry.
    pub const fn header_name(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }

    fn library_algorithm(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }

    /// PEM labels a public key of this algorithm may carry; anything else is a swapped file.
    fn public_pem_labels(self) -> &'static [&'static str] {
        match self {
            JwtAlgorithm::Hs256 => &[],
            JwtAlgorithm::Rs256 => &["PUBLIC KEY", "RSA PUBLIC KEY"],
            JwtAlgorithm::Es256 => &["PUBLIC KEY"],
        }
    }

    /// PEM labels a private key may carry (EC keys must be PKCS#8, which is what the crate reads).
    fn private_pem_labels(self) -> &'static [&'static str] {
        match self {
            JwtAlgorithm::Hs256 => &[],
            JwtAlgorithm::Rs256 => &["PRIVATE KEY", "RSA PRIVATE KEY"],
            JwtAlgorithm::Es256 => &["PRIVATE KEY"],
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header_name())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = JwtKeyError;

    /// Exact names only (`HS256`, `RS256`, `ES256`), the spelling the `alg` header must use too.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [
            JwtAlgorithm::Hs256,
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
        ]
        .into_iter()
        .find(|algorithm| algorithm.header_name() == name)
        .ok_or_else(|| JwtKeyError::UnknownAlgorithm(name.to_owned()))
    }
}

/// The keys of one node: built once from configuration, then handed to [`TokenVerifier::new`]
/// and [`TokenSigner::new`]. Every key belongs to the same [`JwtAlgorithm`], so the key never
/// decides the algorithm and an HMAC key is never built from public-key material.
#[derive(Clone)]
pub struct JwtKeys {
    algorithm: JwtAlgorithm,
    /// Absent on nodes that only verify (workers given just the public key).
    signing_key: Option<EncodingKey>,
    /// Verifies tokens without a `kid` header; absent for a pure key set.
    default_verifying_key: Option<DecodingKey>,
    /// Verifies tokens whose `kid` header names the entry; the header is only ever a map key.
    verifying_keys_by_kid: HashMap<String, DecodingKey>,
    /// HS256 only: the HMAC with the secret already keyed in, so signing a
    /// token clones it instead of hashing the key again (issue 19: a token
    /// is minted per cookie login).
    hs256_mac: Option<HmacSha256>,
}

/// HMAC-SHA256, HS256's signature.
type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl JwtKeys {
    /// HS256 keys from SocketCluster's `authKey`: the string's UTF-8 bytes are the HMAC key, used
    /// both to sign and to verify.
    pub fn hs256(secret: &str) -> Result<Self, JwtKeyError> {
        let (signing_key, verifying_key) = hmac_keys(secret)?;
        let mac = <HmacSha256 as hmac::Mac>::new_from_slice(secret.as_bytes()).map_err(|e| {
            JwtKeyError::UnusableKey {
                algorithm: JwtAlgorithm::Hs256,
                role: "secret",
                detail: e.to_string(),
            }
        })?;
        Ok(JwtKeys {
            algorithm: JwtAlgorithm::Hs256,
            signing_key: Some(signing_key),
            default_verifying_key: Some(verifying_key),
            verifying_keys_by_kid: HashMap::new(),
            hs256_mac: Some(mac),
        })
    }

    /// RS256 keys from PEM text: the public key verifies; the private key (PKCS#1 or PKCS#8, at
    /// least 2048 bits) signs and is checked against the public key before it is accepted.
    pub fn rs256_pem(
        public_key_pem: &str,
        private_key_pem: Option<&str>,
    ) -> Result<Self, JwtKeyError> {
        Self::asymmetric(JwtAlgorithm::Rs256, public_key_pem, private_key_pem)
    }

    /// ES256 keys from PEM text (P-256 only): the public key verifies; the PKCS#8 private key signs
    /// and is checked against the public key before it is accepted.
    pub fn es256_pem(
        public_key_pem: &str,
        private_key_pem: Option<&str>,
    ) -> Result<Self, JwtKeyError> {
        Self::asymmetric(JwtAlgorithm::Es256, public_key_pem, private_key_pem)
    }

    /// An empty key set for `algorithm`: fill it with [`JwtKeys::with_kid_secret`] or
    /// [`JwtKeys::with_kid_public_key_pem`]; tokens must then name one of its keys by `kid`.
    pub fn key_set(algorithm: JwtAlgorithm) -> Self {
        JwtKeys {
            algorithm,
            signing_key: None,
            default_verifying_key: None,
            verifying_keys_by_kid: HashMap::new(),
            hs256_mac: None,
        }
    }

    /// Adds an HS256 verification key reachable only through the token's `kid` header (rotation).
    pub fn with_kid_secret(self, kid: &str, secret: &str) -> Result<Self, JwtKeyError> {
        self.require_algorithm(JwtAlgorithm::Hs256)?;
        let (_, verifying_key) = hmac_keys(secret)?;
        self.with_kid_key(kid, verifying_key)
    }

    /// Adds an RS256/ES256 public key reachable only through the token's `kid` header (rotation).
    pub fn with_kid_public_key_pem(
        self,
        kid: &str,
        public_key_pem: &str,
    ) -> Result<Self, JwtKeyError> {
        if self.algorithm == JwtAlgorithm::Hs256 {
            return Err(JwtKeyError::AlgorithmMismatch {
                configured: self.algorithm,
                needed: "an RS256 or ES256",
            });
        }
        let verifying_key = public_key(self.algorithm, public_key_pem)?;
        self.with_kid_key(kid, verifying_key)
    }

    /// The algorithm every token must name in its `alg` header.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Whether a [`TokenSigner`] can be made from these keys (a private key or HMAC secret exists).
    pub fn can_sign(&self) -> bool {
        self.signing_key.is_some()
    }

    fn asymmetric(
        algorithm: JwtAlgorithm,
        public_key_pem: &str,
        private_key_pem: Option<&str>,
    ) -> Result<Self, JwtKeyError> {
        let verifying_key = public_key(algorithm, public_key_pem)?;
        let signing_key = match private_key_pem {
            Some(pem) => Some(private_key_matching(algorithm, pem, &verifying_key)?),
            None => None,
        };
        Ok(JwtKeys {
            algorithm,
            signing_key,
            default_verifying_key: Some(verifying_key),
            verifying_keys_by_kid: HashMap::new(),
            hs256_mac: None,
        })
    }

    fn require_algorithm(&self, needed: JwtAlgorithm) -> Result<(), JwtKeyError> {
        if self.algorithm == needed {
            Ok(())
        } else {
            Err(JwtKeyError::AlgorithmMismatch {
                configured: self.algorithm,
                needed: needed.header_name(),
            })
        }
    }

    fn with_kid_key(mut self, kid: &str, key: DecodingKey) -> Result<Self, JwtKeyError> {
        if kid.is_empty() {
            return Err(JwtKeyError::EmptyKid);
        }
        if self.verifying_keys_by_kid.contains_key(kid) {
            return Err(JwtKeyError::DuplicateKid(kid.to_owned()));
        }
        self.verifying_keys_by_kid.insert(kid.to_owned(), key);
        Ok(self)
    }
}

impl fmt::Debug for JwtKeys {
    /// Names the algorithm and kids only: key material must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self
            .verifying_keys_by_kid
            .keys()
            .map(String::as_str)
            .collect();
        kids.sort_unstable();
        f.debug_struct("JwtKeys")
            .field("algorithm", &self.algorithm)
            .field("can_sign", &self.can_sign())
            .field("has_default_key", &self.default_verifying_key.is_some())
            .field("kids", &kids)
            .finish()
    }
}

fn hmac_keys(secret: &str) -> Result<(EncodingKey, DecodingKey), JwtKeyError> {
    if secret.is_empty() {
        return Err(JwtKeyError::EmptySecret);
    }
    // The classic key-confusion attack signs HS256 with the server's public PEM text; refusing
    // PEM-looking secrets keeps an operator from configuring that key by mistake.
    if secret.trim_start().starts_with("-----BEGIN") {
        return Err(JwtKeyError::SecretLooksLikePem);
    }
    let unusable = |error: jsonwebtoken::errors::Error| JwtKeyError::UnusableKey {
        algorithm: JwtAlgorithm::Hs256,
        role: "secret",
        detail: error.to_string(),
    };
    let signing_key = EncodingKey::from_secret(secret.as_bytes()).map_err(unusable)?;
    let verifying_key = DecodingKey::from_secret(secret.as_bytes()).map_err(unusable)?;
    Ok((signing_key, verifying_key))
}

/// The label of the first PEM block (`-----BEGIN <label>-----`), if the text starts with one.
fn pem_label(pem: &str) -> Option<&str> {
    pem.trim_start()
        .lines()
        .next()?
        .trim_end()
        .strip_prefix("-----BEGIN ")?
        .strip_suffix("-----")
}

fn check_pem_label(
    algorithm: JwtAlgorithm,
    pem: &str,
    allowed: &[&str],
    expected: &'static str,
) -> Result<(), JwtKeyError> {
    let label = pem_label(pem);
    if label.is_some_and(|label| allowed.contains(&label)) {
        Ok(())
    } else {
        Err(JwtKeyError::WrongPemLabel {
            algorithm,
            expected,
            found: label.map(str::to_owned),
        })
    }
}

fn public_key(algorithm: JwtAlgorithm, pem: &str) -> Result<DecodingKey, JwtKeyError> {
    check_pem_label(algorithm, pem, algorithm.public_pem_labels(), "public key")?;
    let unusable = |detail: String| JwtKeyError::UnusableKey {
        algorithm,
        role: "public",
        detail,
    };
    let key = match algorithm {
        JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
        JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(pem.as_bytes()),
        JwtAlgorithm::Hs256 => return Err(unusable("HS256 has no public key".to_owned())),
    }
    .map_err(|error| unusable(error.to_string()))?;
    // The ES256 verifier only parses the curve point when it is built, so build one now: a P-384
    // key then fails at start-up instead of failing every handshake. A probe signature that does
    // not verify is fine here; an error means the key itself is unusable.
    let probe_signature = URL_SAFE_NO_PAD.encode([0u8; 64]);
    crypto::verify(
        &probe_signature,
        KEY_PROBE_MESSAGE,
        &key,
        algorithm.library_algorithm(),
    )
    .map_err(|error| unusable(error.to_string()))?;
    Ok(key)
}

fn private_key_matching(
    algorithm: JwtAlgorithm,
    pem: &str,
    public: &DecodingKey,
) -> Result<EncodingKey, JwtKeyError> {
    check_pem_label(
        algorithm,
        pem,
        algorithm.private_pem_labels(),
        "private key",
    )?;
    let unusable = |detail: String| JwtKeyError::UnusableKey {
        algorithm,
        role: "private",
        detail,
    };
    let key = match algorithm {
        JwtAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        JwtAlgorithm::Es256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        JwtAlgorithm::Hs256 => return Err(unusable("HS256 has no private key".to_owned())),
    }
    .map_err(|error| unusable(error.to_string()))?;
    // One probe signature proves the key parses (the crate defers that to the first sign), gives
    // the RSA modulus size (the signature is as long as the modulus), and proves the pair matches.
    let probe_signature = crypto::sign(KEY_PROBE_MESSAGE, &key, algorithm.library_algorithm())
        .map_err(|error| unusable(error.to_string()))?;
    if algorithm == JwtAlgorithm::Rs256 {
        let modulus_bytes = URL_SAFE_NO_PAD
            .decode(&probe_signature)
            .map_err(|error| unusable(error.to_string()))?
            .len();
        if modulus_bytes < MIN_RSA_SIGNING_MODULUS_BYTES {
            return Err(JwtKeyError::RsaKeyTooSmall {
                bits: modulus_bytes * 8,
            });
        }
    }
    match crypto::verify(
        &probe_signature,
        KEY_PROBE_MESSAGE,
        public,
        algorithm.library_algorithm(),
    ) {
        Ok(true) => Ok(key),
        Ok(false) => Err(JwtKeyError::KeyPairMismatch { algorithm }),
        Err(error) => Err(JwtKeyError::UnusableKey {
            algorithm,
            role: "public",
            detail: error.to_string(),
        }),
    }
}

/// Decides whether a presented token authenticates a socket: the `alg` header must equal the
/// configured algorithm exactly, the signature must verify, `exp` must be present and not passed,
/// `nbf` (when present) must have arrived, both with the configured leeway, and `aud` must match
/// when an audience is configured, and the token's lifetime must stay within the maximum when one
/// is configured.
#[derive(Clone)]
pub struct TokenVerifier {
    algorithm: JwtAlgorithm,
    default_key: Option<DecodingKey>,
    keys_by_kid: HashMap<String, DecodingKey>,
    leeway: Duration,
    /// When set, the token's `aud` (a string or an array of strings) must contain it.
    audience: Option<String>,
    /// When set, `exp - iat` (or `exp - now` without `iat`) must not exceed it.
    max_lifetime: Option<Duration>,
}

impl TokenVerifier {
    /// A verifier over `keys` with [`DEFAULT_JWT_LEEWAY`] and no audience check (SocketCluster's
    /// tokens carry no `aud`). Refuses keys that could verify nothing.
    pub fn new(keys: &JwtKeys) -> Result<Self, JwtKeyError> {
        if keys.default_verifying_key.is_none() && keys.verifying_keys_by_kid.is_empty() {
            return Err(JwtKeyError::NoVerifyingKey);
        }
        Ok(TokenVerifier {
            algorithm: keys.algorithm,
            default_key: keys.default_verifying_key.clone(),
            keys_by_kid: keys.verifying_keys_by_kid.clone(),
            leeway: DEFAULT_JWT_LEEWAY,
            audience: None,
            max_lifetime: None,
        })
    }

    /// Sets the clock tolerance for `exp` and `nbf`; more than [`MAX_JWT_LEEWAY`] is refused.
    pub fn with_leeway(mut self, leeway: Duration) -> Result<Self, JwtKeyError> {
        if leeway > MAX_JWT_LEEWAY {
            return Err(JwtKeyError::LeewayTooLarge { leeway });
        }
        self.leeway = leeway;
        Ok(self)
    }

    /// Requires tokens to be issued for `audience` (checked like Node's `audience` option).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Refuses tokens that live longer than `max` (`--max-token-lifetime`): a leaked token with
    /// a far-off `exp`, signed by a tool or a careless app, must not open the door for months.
    /// The lifetime is `exp - iat`, or `exp - now` for a token without `iat`; exactly `max` passes.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// The algorithm tokens must name.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// The clock tolerance in force.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// The longest token lifetime accepted, when limited (see [`TokenVerifier::with_max_lifetime`]).
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// Verifies `token` at `now_unix_secs` and returns its claims in token order. Checks run in
    /// jsonwebtoken 9's order so that each refusal carries the message Node would send.
    // Hot path: once per handshake and per `#authenticate`; it allocates only the decoded segments.
    pub fn verify(
        &self,
        token: &str,
        now_unix_secs: u64,
    ) -> Result<Map<String, Value>, AuthTokenError> {
        let decoded = DecodedToken::parse(token)?;
        let key = self.key_for(&decoded.header)?;
        if decoded.signature.is_empty() {
            return Err(InvalidTokenReason::SignatureRequired.into());
        }
        // Exact string comparison: "none", "None", "HS512" or "RS256" against an HS256 node all
        // stop here, whatever the key could do.
        if decoded.header.get("alg").and_then(Value::as_str) != Some(self.algorithm.header_name()) {
            return Err(InvalidTokenReason::InvalidAlgorithm.into());
        }
        match crypto::verify(
            decoded.signature,
            decoded.signing_input.as_bytes(),
            key,
            self.algorithm.library_algorithm(),
        ) {
            Ok(true) => {}
            Ok(false) => return Err(InvalidTokenReason::InvalidSignature.into()),
            Err(_) => return Err(TokenFailure::KeyUnusable.into()),
        }
        check_time_claims(&decoded.claims, now_unix_secs, self.leeway)?;
        if let Some(max) = self.max_lifetime {
            check_lifetime(&decoded.claims, now_unix_secs, max)?;
        }
        self.check_audience(&decoded.claims)?;
        Ok(decoded.claims)
    }

    fn key_for(&self, header: &Map<String, Value>) -> Result<&DecodingKey, AuthTokenError> {
        let key = match header.get("kid") {
            // The kid is only ever a key into the configured map: never a path, URL or query.
            Some(kid) => kid.as_str().and_then(|kid| self.keys_by_kid.get(kid)),
            None => self.default_key.as_ref(),
        };
        key.ok_or_else(|| InvalidTokenReason::UnknownKid.into())
    }

    fn check_audience(&self, claims: &Map<String, Value>) -> Result<(), AuthTokenError> {
        let Some(expected) = &self.audience else {
            return Ok(());
        };
        let matches = match claims.get("aud") {
            Some(Value::String(audience)) => audience == expected,
            Some(Value::Array(audiences)) => audiences
                .iter()
                .any(|audience| audience.as_str() == Some(expected.as_str())),
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(InvalidTokenReason::AudienceMismatch {
                expected: expected.clone(),
            }
            .into())
        }
    }
}

impl fmt::Debug for TokenVerifier {
    /// Names the policy only: key material must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.keys_by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("TokenVerifier")
            .field("algorithm", &self.algorithm)
            .field("has_default_key", &self.default_key.is_some())
            .field("kids", &kids)
            .field("leeway", &self.leeway)
            .field("audience", &self.audience)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// A compact JWS split and decoded, signature not yet checked. Private so that unverified claims
/// can never leave this module.
struct DecodedToken<'token> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    /// `<header>.<payload>` exactly as received: the bytes the signature covers.
    signing_input: &'token str,
    /// The third segment as received (base64url), empty for an unsigned token.
    signature: &'token str,
}

impl<'token> DecodedToken<'token> {
    fn parse(token: &'token str) -> Result<Self, AuthTokenError> {
        if token.is_empty() {
            return Err(InvalidTokenReason::NotProvided.into());
        }
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(InvalidTokenReason::Malformed.into());
        };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let header = decode_json_object(header).ok_or(InvalidTokenReason::Undecodable)?;
        let claims = decode_json_object(payload).ok_or(InvalidTokenReason::Undecodable)?;
        // Node's jws refuses a non-base64url signature as an undecodable token; checking here
        // keeps such input from being reported as a key problem by the crypto layer.
        if URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(InvalidTokenReason::Undecodable.into());
        }
        Ok(DecodedToken {
            header,
            claims,
            signing_input,
            signature,
        })
    }
}

fn decode_json_object(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(object) => Some(object),
        _ => None,
    }
}

/// jsonwebtoken 9's rules with the leeway as `clockTolerance`: not active while
/// `nbf > now + leeway`, expired once `now >= exp + leeway`; plus our own rule that `exp` exists.
fn check_time_claims(
    claims: &Map<String, Value>,
    now_unix_secs: u64,
    leeway: Duration,
) -> Result<(), AuthTokenError> {
    // f64 like JavaScript: NumericDates may be fractional, and u64 seconds fit exactly until 2^53.
    let now = now_unix_secs as f64;
    let leeway = leeway.as_secs_f64();
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().ok_or(InvalidTokenReason::InvalidNbfValue)?;
        if nbf > now + leeway {
            return Err(AuthTokenError::NotBefore {
                date: javascript_date_json(nbf),
            });
        }
    }
    let exp = claims
        .get("exp")
        .ok_or(TokenFailure::MissingExp)?
        .as_f64()
        .ok_or(InvalidTokenReason::InvalidExpValue)?;
    if now >= exp + leeway {
        return Err(AuthTokenError::Expired {
            expiry: javascript_date_json(exp),
        });
    }
    Ok(())
}

/// `--max-token-lifetime`: `exp - iat` (or `exp - now` without `iat`) must not exceed `max`.
/// Runs after [`check_time_claims`], so `exp` is known to be a number; an expired token is
/// reported as expired, not as too long-lived.
fn check_lifetime(
    claims: &Map<String, Value>,
    now_unix_secs: u64,
    max: Duration,
) -> Result<(), AuthTokenError> {
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(InvalidTokenReason::InvalidExpValue)?;
    let start = match claims.get("iat") {
        Some(iat) => iat.as_f64().ok_or(InvalidTokenReason::InvalidIatValue)?,
        None => now_unix_secs as f64,
    };
    if exp - start > max.as_secs_f64() {
        return Err(InvalidTokenReason::LifetimeTooLong { max }.into());
    }
    Ok(())
}

/// A lifetime limit as an operator wrote it (`7d`, `12h`, `90m`, `45s`), for refusal messages.
fn duration_text(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() != 0 || seconds == 0 {
        return format!("{}s", duration.as_secs_f64());
    }
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What `JSON.stringify(new Date(seconds * 1000))` gives in Node, which is how SocketCluster
/// puts `expiry` and `date` on the wire: ISO-8601 with milliseconds (`2026-11-22T14:22:54.000Z`),
/// six-digit signed years outside 0..=9999, and `None` (JSON `null`) outside JavaScript's date range.
fn javascript_date_json(seconds: f64) -> Option<String> {
    const MS_PER_DAY: i64 = 86_400_000;
    const MAX_JS_TIME_MS: f64 = 8.64e15;
    let millis = seconds * 1000.0;
    if !millis.is_finite() || millis.abs() > MAX_JS_TIME_MS {
        return None;
    }
    // JavaScript's TimeClip truncates toward zero; the range check above keeps the cast exact.
    let millis = millis.trunc() as i64;
    let days = millis.div_euclid(MS_PER_DAY);
    let millis_of_day = millis.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_date_from_days(days);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else if year < 0 {
        format!("-{:06}", year.unsigned_abs())
    } else {
        format!("+{year:06}")
    };
    Some(format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        millis_of_day / 3_600_000,
        millis_of_day / 60_000 % 60,
        millis_of_day / 1000 % 60,
        millis_of_day % 1000,
    ))
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01, valid for any `i64`
/// range JavaScript dates reach; the `time` crate stops at year 9999.
fn civil_date_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    const DAYS_PER_400_YEARS: i64 = 146_097;
    // Count from 0000-03-01 so that the leap day ends each cycle year.
    let days = days_since_epoch + 719_468;
    let era = days.div_euclid(DAYS_PER_400_YEARS);
    let day_of_era = days.rem_euclid(DAYS_PER_400_YEARS);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small positive numbers by construction (1..=12, 1..=31).
    (year, month as u32, day as u32)
}

/// Issues tokens the way SocketCluster's `setAuthToken` (ag-auth → jsonwebtoken) does: header
/// `{"alg":…,"typ":"JWT"}`, the claims in insertion order, `iat` and `exp` added when absent.
#[derive(Clone)]
pub struct TokenSigner {
    algorithm: JwtAlgorithm,
    key: EncodingKey,
    /// base64url of the fixed header, computed once.
    encoded_header: String,
    /// HS256: the HMAC keyed once (see [`JwtKeys`]).
    hs256_mac: Option<HmacSha256>,
}

impl TokenSigner {
    /// A signer over the private key (or HMAC secret) of `keys`.
    pub fn new(keys: &JwtKeys) -> Result<Self, JwtKeyError> {
        let key = keys.signing_key.clone().ok_or(JwtKeyError::NoSigningKey)?;
        // Node's jsonwebtoken writes alg before typ; the crate's Header would write typ first,
        // so the header is spelled out here to stay byte-identical.
        let header = format!(
            r#"{{"alg":"{}","typ":"JWT"}}"#,
            keys.algorithm.header_name()
        );
        Ok(TokenSigner {
            algorithm: keys.algorithm,
            key,
            encoded_header: URL_SAFE_NO_PAD.encode(header),
            hs256_mac: keys.hs256_mac.clone(),
        })
    }

    /// The algorithm of the tokens this signer issues.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Signs `claims`, adding `iat = now_unix_secs` unless present and `exp = iat + expires_in`
    /// (whole seconds) unless present, as jsonwebtoken's `expiresIn` does. New claims go last, so
    /// `{"username":"alice","role":"user","iat":1700000000}` with one day gives exactly the token
    /// SocketCluster gives. Byte-exactness needs serde_json's `preserve_order` feature.
    pub fn sign(
        &self,
        mut claims: Map<String, Value>,
        expires_in: Duration,
        now_unix_secs: u64,
    ) -> Result<String, TokenSignError> {
        // Our own verifier refuses non-numeric time claims, so never issue one.
        for claim in ["iat", "nbf", "exp"] {
            if claims.get(claim).is_some_and(|value| !value.is_number()) {
                return Err(TokenSignError::NonNumericClaim { claim });
            }
        }
        let iat = match claims.get("iat") {
            Some(iat) => iat.clone(),
            None => {
                claims.insert("iat".to_owned(), now_unix_secs.into());
                now_unix_secs.into()
            }
        };
        if !claims.contains_key("exp") {
            let iat = iat.as_u64().ok_or(TokenSignError::IatNotWholeSeconds)?;
            let exp = iat
                .checked_add(expires_in.as_secs())
                .ok_or(TokenSignError::ExpiryOverflow)?;
            claims.insert("exp".to_owned(), exp.into());
        }
        self.sign_as_is(&claims)
    }

    /// Signs `claims` exactly as given, `iat` and `exp` included (nothing
    /// is added): a caller that built the claims it keeps signs them
    /// without handing over a copy (issue 19: a token per cookie login).
    pub fn sign_as_is(&self, claims: &Map<String, Value>) -> Result<String, TokenSignError> {
        // Our own verifier refuses non-numeric time claims, so never issue one.
        for claim in ["iat", "nbf", "exp"] {
            if claims.get(claim).is_some_and(|value| !value.is_number()) {
                return Err(TokenSignError::NonNumericClaim { claim });
            }
        }
        let payload = serde_json::to_vec(claims)
            .map_err(|error| TokenSignError::Encoding(error.to_string()))?;
        // The whole token grows in one buffer: header, payload, signature.
        let mut token =
            String::with_capacity(self.encoded_header.len() + payload.len() * 4 / 3 + 64);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        match &self.hs256_mac {
            Some(mac) => {
                let mut mac = mac.clone();
                hmac::Mac::update(&mut mac, token.as_bytes());
                let tag = hmac::Mac::finalize(mac).into_bytes();
                token.push('.');
                URL_SAFE_NO_PAD.encode_string(tag, &mut token);
            }
            None => {
                let signature = crypto::sign(
                    token.as_bytes(),
                    &self.key,
                    self.algorithm.library_algorithm(),
                )
                .map_err(|error| TokenSignError::Crypto(error.to_string()))?;
                token.push('.');
                token.push_str(&signature);
            }
        }
        Ok(token)
    }
}

impl fmt::Debug for TokenSigner {
    /// Names the algorithm only: key material must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused, as SocketCluster names it on the wire. The client acts on the name and
/// `isBadToken`: a bad token makes it delete the stored token (`#removeAuthToken`), a
/// not-yet-valid one is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthTokenError {
    /// `exp` (plus leeway) has passed: `AuthTokenExpiredError`.
    #[error("jwt expired")]
    Expired {
        /// `exp` as Node's `Date` JSON (`null` when outside JavaScript's date range).
        expiry: Option<String>,
    },
    /// `nbf` (minus leeway) has not arrived: `AuthTokenNotBeforeError`, not a bad token.
    #[error("jwt not active")]
    NotBefore {
        /// `nbf` as Node's `Date` JSON (`null` when outside JavaScript's date range).
        date: Option<String>,
    },
    /// The token is forged, damaged or not for us: `AuthTokenInvalidError`.
    #[error("{0}")]
    Invalid(InvalidTokenReason),
    /// Any other verification failure: `AuthTokenError`.
    #[error("{0}")]
    Failed(TokenFailure),
}

impl AuthTokenError {
    /// SocketCluster's error name, the `name` field on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            AuthTokenError::Expired { .. } => "AuthTokenExpiredError",
            AuthTokenError::NotBefore { .. } => "AuthTokenNotBeforeError",
            AuthTokenError::Invalid(_) => "AuthTokenInvalidError",
            AuthTokenError::Failed(_) => "AuthTokenError",
        }
    }

    /// Whether the client should delete the token: true for everything but not-yet-valid, which
    /// is also when the server sends `#removeAuthToken`.
    pub fn is_bad_token(&self) -> bool {
        !matches!(self, AuthTokenError::NotBefore { .. })
    }

    /// A short snake_case label for the `reason` of metrics (low cardinality by construction).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthTokenError::Expired { .. } => "expired",
            AuthTokenError::NotBefore { .. } => "not_before",
            AuthTokenError::Invalid(_) => "invalid",
            AuthTokenError::Failed(_) => "error",
        }
    }

    /// The error object exactly as SocketCluster sends it: `message`, `name`, then `expiry` or
    /// `date` where the error has one, then `isBadToken` (key order needs `preserve_order`).
    pub fn to_wire(&self) -> Value {
        let mut wire = Map::new();
        wire.insert("message".to_owned(), Value::String(self.to_string()));
        wire.insert("name".to_owned(), Value::String(self.name().to_owned()));
        match self {
            AuthTokenError::Expired { expiry } => {
                wire.insert(
                    "expiry".to_owned(),
                    expiry.clone().map_or(Value::Null, Value::String),
                );
            }
            AuthTokenError::NotBefore { date } => {
                wire.insert(
                    "date".to_owned(),
                    date.clone().map_or(Value::Null, Value::String),
                );
            }
            AuthTokenError::Invalid(_) | AuthTokenError::Failed(_) => {}
        }
        wire.insert("isBadToken".to_owned(), Value::Bool(self.is_bad_token()));
        Value::Object(wire)
    }
}

impl From<InvalidTokenReason> for AuthTokenError {
    fn from(reason: InvalidTokenReason) -> Self {
        AuthTokenError::Invalid(reason)
    }
}

impl From<TokenFailure> for AuthTokenError {
    fn from(failure: TokenFailure) -> Self {
        AuthTokenError::Failed(failure)
    }
}

/// What is wrong with an `AuthTokenInvalidError` token; the text is jsonwebtoken 9's message, so
/// clients and logs read the same as with a Node server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTokenReason {
    /// The credential was an empty string.
    #[error("jwt must be provided")]
    NotProvided,
    /// Not three dot-separated segments.
    #[error("jwt malformed")]
    Malformed,
    /// A segment is not base64url, or the header or payload is not a JSON object.
    #[error("invalid token")]
    Undecodable,
    /// Unsigned (`alg: none` style) token: the third segment is empty.
    #[error("jwt signature is required")]
    SignatureRequired,
    /// The `alg` header is not exactly the configured algorithm.
    #[error("invalid algorithm")]
    InvalidAlgorithm,
    /// The signature does not match the header and payload.
    #[error("invalid signature")]
    InvalidSignature,
    /// `nbf` is present but not a number.
    #[error("invalid nbf value")]
    InvalidNbfValue,
    /// `exp` is present but not a number.
    #[error("invalid exp value")]
    InvalidExpValue,
    /// `iat` is present but not a number, so the token's lifetime cannot be measured against
    /// `--max-token-lifetime`.
    #[error("invalid iat value")]
    InvalidIatValue,
    /// `exp - iat` (or `exp - now` without `iat`) exceeds `--max-token-lifetime`.
    #[error(
        "jwt lifetime exceeds the maximum token lifetime of {} (--max-token-lifetime)",
        duration_text(*.max)
    )]
    LifetimeTooLong {
        /// The configured limit (ours, so safe to echo).
        max: Duration,
    },
    /// The `kid` header names no configured key, or a key set needs a `kid` and there is none.
    /// The kid itself is not echoed: it is attacker-chosen text.
    #[error("unknown kid")]
    UnknownKid,
    /// `aud` does not contain the configured audience.
    #[error("jwt audience invalid. expected: {expected}")]
    AudienceMismatch {
        /// The configured audience (ours, so safe to echo).
        expected: String,
    },
}

/// Failures that are not SocketCluster's expired / not-before / invalid: wire name `AuthTokenError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenFailure {
    /// No `exp` claim. Node accepts such a token forever; sockhive requires `exp`.
    #[error("jwt exp claim is required")]
    MissingExp,
    /// The configured key could not run the check (a configuration fault, not the token's).
    #[error("jwt could not be verified with the configured key")]
    KeyUnusable,
}

/// A key or verifier setting that cannot work; raised at start-up, never per connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtKeyError {
    /// `--auth-algorithm` named something other than HS256, RS256 or ES256.
    #[error("unknown JWT algorithm {0:?} (expected HS256, RS256 or ES256)")]
    UnknownAlgorithm(String),
    /// An empty HMAC secret would let anyone sign.
    #[error("the HS256 secret is empty")]
    EmptySecret,
    /// An HMAC secret that is PEM text is the key-confusion setup; refuse it outright.
    #[error("the HS256 secret is PEM text; use RS256/ES256 with key files instead")]
    SecretLooksLikePem,
    /// A key file of the wrong kind (e.g. public and private swapped).
    #[error("{algorithm} needs a {expected} PEM, found label {found:?}")]
    WrongPemLabel {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// "public key" or "private key".
        expected: &'static str,
        /// The `-----BEGIN …-----` label found, if any.
        found: Option<String>,
    },
    /// The key does not parse or does not fit the algorithm (e.g. a P-384 key for ES256).
    #[error("the {algorithm} {role} key is unusable: {detail}")]
    UnusableKey {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// "public", "private" or "secret".
        role: &'static str,
        /// What the crypto library said.
        detail: String,
    },
    /// RSA signing keys under 2048 bits are refused, as Node's jsonwebtoken does.
    #[error("the RSA signing key has {bits} bits; at least 2048 are required")]
    RsaKeyTooSmall {
        /// The modulus size found.
        bits: usize,
    },
    /// The private key does not sign what the public key verifies.
    #[error("the {algorithm} private key does not belong to the public key")]
    KeyPairMismatch {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
    },
    /// A kid key of another algorithm family than the key set's.
    #[error("a {configured} key set cannot take {needed} key")]
    AlgorithmMismatch {
        /// The key set's algorithm.
        configured: JwtAlgorithm,
        /// The kind of key the call adds.
        needed: &'static str,
    },
    /// An empty kid would match `"kid":""` headers only; almost certainly a config slip.
    #[error("a kid must not be empty")]
    EmptyKid,
    /// The same kid twice would make which key verifies depend on the order of configuration.
    #[error("kid {0:?} is configured twice")]
    DuplicateKid(String),
    /// A verifier without any key would refuse every token.
    #[error("no key to verify tokens with")]
    NoVerifyingKey,
    /// Signing needs the HMAC secret or the private key.
    #[error("no private key to sign tokens with")]
    NoSigningKey,
    /// A leeway over [`MAX_JWT_LEEWAY`].
    #[error("JWT leeway {leeway:?} exceeds the maximum of 60s")]
    LeewayTooLarge {
        /// The leeway asked for.
        leeway: Duration,
    },
}

/// Why sockhive could not issue a token (claims handed in by our own code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenSignError {
    /// `iat`, `nbf` or `exp` is present but not a number; our verifier would refuse the token.
    #[error("claim {claim} must be a number")]
    NonNumericClaim {
        /// The offending claim.
        claim: &'static str,
    },
    /// `exp` must be computed from `iat`, which is then needed as whole non-negative seconds.
    #[error("claim iat must be whole non-negative seconds to compute exp from it")]
    IatNotWholeSeconds,
    /// `iat + expires_in` does not fit in 64 bits.
    #[error("exp would overflow")]
    ExpiryOverflow,
    /// The claims could not be serialized.
    #[error("claims could not be encoded: {0}")]
    Encoding(String),
    /// The crypto library refused to sign.
    #[error("signing failed: {0}")]
    Crypto(String),
    /// The node has only a public key: it verifies tokens but cannot mint them.
    #[error("no signing key is configured (auth_private_key)")]
    NoSigningKey,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VECTORS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/jwt.json");

    /// Test-only key pairs, generated once with `openssl genpkey` on the build machine.
    const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDJoeoeftcIJl5t
VJwU1C2q+avlgeFZEyFJdYB4rqOMtnIpVSDMduUVrQ3Ctt4rdlNG/qDJl6ZH6wzQ
6G1DVGte8AlMEIpfVW9uYUAafZ3piCUkQxTY+wJZCH5x3bb1Gi+RcWUEkLyAFQpj
9hEdyhzcTLXB9jAY3i9WPXIbOZSx6RPtbV3GRS3h1CaUPM5MWT2N/rMerVuAwYU0
T5qpPlrQMrtpkuCg/WQGI4pX8Ni7YWqC1OErABrONDedL4O350P8EeVZXOFV2p4W
ShbbMTxoqIfB/8PPFu8mtRXaZEncaUkHKm+b1MvbQZoSM4+DMBHlUAHPYxgZYGFC
4wGNwv2hAgMBAAECggEAJlmefvhfC9TIZwENwsRsfzWHpVpjsx55WVB5A/srbksR
QZ1IZLtEbTACCwPfE+MoibtKd61ZWhpx0JY0mfbHiUIccpQ+zU0hqZvjpmY4D7/u
WIxNvctYMfj0m9Gwx8OYQpCPxyOERtQ5qrOVo9XaUWhhtaeOlFxGIqADQPxdtMyq
aucAGM83F36p5u6MzglbEoKc47YK6iawLvJBE55aMhFuCIq/U4Dy+sXs90IxJp/a
Emm4Q2ipku+77wYxyuDmfA0m8WXoJvyZMkjREOQnUI8bQbHqZPBhL3KsOtyK7uqM
Kpsd9r2NodwQXaHv13gKppZeIeGxtEFdbiiqEVMbRQKBgQD09zgJV2vBdYVmG4US
MmN9BXVpYcogrctjoSTlhh/uUiyPUgzyQQX6epMCR4MYk+3Meo5XqYIDw0s13DKT
wCfoty94puhMMZjQElhizwu0UyxIsfqvSiQQWoteWXrzxQN2qp90eG6pekR1n0RC
rFU9m0jOHJr2xaH3y2MkKGhrtwKBgQDStwF+QFNQzlvTeiAh34xKLa9QtsTSSMCP
/fPu/nNZppfnf0h8Uy+8msOnmyLCf8iLz2QTo3FLpbxxcRgxxLfVE/i6e1s6XjgQ
8xUk0yvKkdoQwSw+S6yb4832PBMNW9GfE4F135LQ9a/F4UbM/Cc/McsisC1TtOfC
q8P2aSuRZwKBgQCdxvlVsvPZh/siuAjunnvL0487D9wjTi0Y/3qHRuscEdtXeE6U
XeMe4IH9TtgWJXldYXZ66deu2sN/blM5LOPHlO1DdaVbJfq50YcSJS7xtzxnmhLP
gh5WVis72sBBcBx5+w128/a6u+CKLcnGc773TiQHdQ8ucD6RHnO9nzUaYwKBgE1R
ucqJ8AiGsEs5VPEZBnFxshL7/dzrtT0hApF/7PPInZTkr8RvAeVDJOgrlOWp3fzv
bNmH79rCRhOaXDZm6M3XNj23ZhJU4F3X1LpegoMiYdIkEAgL3JqXTMw93v/X4WNt
1ONb1pO2k3kY4NH29K/Lpa5k1z0P9LsKLC4PCV2hAoGBAKDUBgV4Dvit10RpnyIb
b1PPc83+7kDnmQY5hWvd87QNmyYvSDz3+BgRgmQCkMBrX5ESqUN4tpnz6Rv+qKME
tal0cfoq7DZu0ryvEOEzCOkly6Cqxm/AD7SXmMo5TY/v0wkSeICNA4nH+zLGbjm9
P/7jXwM5sMTFVeFePlnyfN5E
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyaHqHn7XCCZebVScFNQt
qvmr5YHhWRMhSXWAeK6jjLZyKVUgzHblFa0NwrbeK3ZTRv6gyZemR+sM0OhtQ1Rr
XvAJTBCKX1VvbmFAGn2d6YglJEMU2PsCWQh+cd229RovkXFlBJC8gBUKY/YRHcoc
3Ey1wfYwGN4vVj1yGzmUsekT7W1dxkUt4dQmlDzOTFk9jf6zHq1bgMGFNE+aqT5a
0DK7aZLgoP1kBiOKV/DYu2FqgtThKwAazjQ3nS+Dt+dD/BHlWVzhVdqeFkoW2zE8
aKiHwf/DzxbvJrUV2mRJ3GlJBypvm9TL20GaEjOPgzAR5VABz2MYGWBhQuMBjcL9
oQIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmQ4/Dc2VDEUiCpy8
9CCwBvvkrBF7dxmdp5+vZX21T+ahRANCAARav9MsDYbPrJ1Z7s2gSZdHVz3e19y5
9R2utCAfG8e8vaM8gPvCEJfRmyBX1ZjyAbwN2qIuAnO6jU0Y1sq8Duq4
-----END PRIVATE KEY-----
";
    const EC_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWr/TLA2Gz6ydWe7NoEmXR1c93tfc
ufUdrrQgHxvHvL2jPID7whCX0ZsgV9WY8gG8DdqiLgJzuo1NGNbKvA7quA==
-----END PUBLIC KEY-----
";
    const EC_P384_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBvKK//mN2b8DfX8eZ6
rmSn8LmndH/U/u58nhllhBB4pHy1a2BVHhXb6FonkJ7M/OuhZANiAAQQNY8mP+T+
WVOF5okEosDTFezx+FKYmyy9xugmi4T2p7yd8yNLpw25Rks3QOYKNCjP9jg0LYHy
CvE4zRCw9MmuH1GX8359gyUS4e/YE3lGMABJkLmMLw4sE770IdRSIhg=
-----END PRIVATE KEY-----
";
    const RSA_1024_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAO5RjGfk6bjRrlLg
o35ET3q63j1zspeUIENe65v+n88qvl+J0HsinlAM+em4J2MvMTpa4ph/446XQi62
FcErC+U+Oi1xYPJI+5k0cC7fBHYop6msiL6COdEftObC8FT8UNerxMFX5ums/1F+
z5YmOpQ8xQc++Cl0dZLbP1B/8Dj1AgMBAAECgYEAxjWG7GYESZYDQaTZ9cuEuxOu
gTe34r/s8XuBw/VLHvdy7Gznu3H4b6XLOSrTf3ehnuI2MhWzwkVlYwpIH6fYtE9k
VLwJrIMFHc3n5wH9KaHUNpjVlzNifOzxNVZp/DOm7uOrKR/NUne0eu6KVXD/NLGT
FGx3+wRvAFS6QI9BYqECQQD4ae0cfEMO/FPlroJ1IIEFcZvGafxIGqjmzzq6wGKO
6zl7A/fidSgmPJps/7bfpyf5jpdh9KFuNyt8tAmnIybpAkEA9Ziy4/N/85nUJ+5F
8oxEr0VAKYQgT3Io0keQFrZmTf1my5637SZ8fFDFgvxdEuGuCkMfY3Gmuqa0CeJh
HhYSLQJAOeBMCxf0c7hcP6YB5RIWnVMTzQ2CZrY3ZdcgQsRx8gRh1wRcq5lKKmZy
QDTvwXnreVw8bukU913JNvunSBaLiQJABPkNjj4M9jLEL/bMJcgfT+k4Dl8lhFZM
a02VplAVLDkYTsEs+jlQRfggt7FCdTJqoryPMyVG+fqMJLMXwlMyFQJAJCUG4xMx
OehQ1qS/XfYWHt+ZpqZIXprY69kGXqca51Aym22kDUAhGbvaEv/lqXQ/yZugxkMm
Z2uhghfb0QvmAw==
-----END PRIVATE KEY-----
";

    const SECRET: &str = "socketcluster-auth-key-for-tests-0123456789";
    const NOW: u64 = 1_767_225_600;

    fn vectors() -> Value {
        let text = std::fs::read_to_string(VECTORS_PATH)
            .unwrap_or_else(|error| panic!("cannot read {VECTORS_PATH}: {error}"));
        serde_json::from_str(&text).expect("jwt.json is JSON")
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            other => panic!("expected a JSON object, got {other}"),
        }
    }

    fn hs256_verifier(leeway_secs: u64) -> TokenVerifier {
        TokenVerifier::new(&JwtKeys::hs256(SECRET).expect("secret"))
            .expect("verifier")
            .with_leeway(Duration::from_secs(leeway_secs))
            .expect("leeway")
    }

    /// Signs arbitrary header and payload text, so tests can build tokens our signer never would.
    fn sign_raw(header: &str, payload: &str, algorithm: Algorithm, secret: &str) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let key = EncodingKey::from_secret(secret.as_bytes()).expect("key");
        let signature = crypto::sign(signing_input.as_bytes(), &key, algorithm).expect("sign");
        format!("{signing_input}.{signature}")
    }

    fn hs256_token(payload: &str) -> String {
        sign_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            payload,
            Algorithm::HS256,
            SECRET,
        )
    }

    fn decoded_payload_text(token: &str) -> String {
        let payload = token.split('.').nth(1).expect("payload segment");
        String::from_utf8(URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("utf-8")
    }

    /// Builds the verifier a vector case describes. Options mirror jsonwebtoken's: a missing
    /// `clockTolerance` is 0 (Node's default), unlike our production default of 30 s.
    fn verifier_for_case(vectors: &Value, case: &Value) -> TokenVerifier {
        let keys = &vectors["keys"];
        let verify = &case["verify"];
        let key_ref = verify["key_ref"].as_str().expect("key_ref");
        let jwt_keys = match key_ref {
            "hs_secret" => JwtKeys::hs256(keys[key_ref]["value"].as_str().expect("value")),
            "rsa_public" => JwtKeys::rs256_pem(keys[key_ref]["pem"].as_str().expect("pem"), None),
            "ec_public" => JwtKeys::es256_pem(keys[key_ref]["pem"].as_str().expect("pem"), None),
            "kid_keyset" => keys[key_ref]["keys"]
                .as_object()
                .expect("kid map")
                .iter()
                .try_fold(
                    JwtKeys::key_set(JwtAlgorithm::Hs256),
                    |set, (kid, secret)| set.with_kid_secret(kid, secret.as_str().expect("secret")),
                ),
            other => panic!("unknown key_ref {other}"),
        }
        .expect("vector keys load");
        let mut verifier = TokenVerifier::new(&jwt_keys)
            .expect("verifier")
            .with_leeway(Duration::ZERO)
            .expect("zero leeway");
        for (option, value) in verify["options"].as_object().expect("options") {
            match option.as_str() {
                // Node may list several algorithms; we pin exactly one, decided by the key type.
                // Every vector that lists algorithms lists exactly that one.
                "algorithms" => assert_eq!(
                    value,
                    &json!([jwt_keys.algorithm().header_name()]),
                    "{}: algorithm list differs from the key's algorithm",
                    case["name"]
                ),
                "clockTolerance" => {
                    let seconds = value.as_u64().expect("whole seconds");
                    verifier = verifier
                        .with_leeway(Duration::from_secs(seconds))
                        .expect("leeway");
                }
                "audience" => verifier = verifier.with_audience(value.as_str().expect("string")),
                other => panic!("{}: option {other} is not understood", case["name"]),
            }
        }
        verifier
    }

    /// SocketCluster's name for each jsonwebtoken error class (socketcluster-server 20's mapping).
    fn socketcluster_name(jsonwebtoken_error: &str) -> &'static str {
        match jsonwebtoken_error {
            "TokenExpiredError" => "AuthTokenExpiredError",
            "NotBeforeError" => "AuthTokenNotBeforeError",
            "JsonWebTokenError" => "AuthTokenInvalidError",
            // The generator's own kid-lookup failure; jsonwebtoken would wrap a key-callback error
            // in JsonWebTokenError, so SocketCluster would call it invalid too.
            "KeyLookup" => "AuthTokenInvalidError",
            other => panic!("unmapped jsonwebtoken error {other}"),
        }
    }

    #[test]
    fn every_vector_case_gets_its_expected_verdict() {
        let vectors = vectors();
        let cases = vectors["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), 23, "jwt.json should hold 23 cases");
        // interface.md requires exp while Node does not (spec 8.2): none of the vectors lacks exp,
        // so the stricter rule never contradicts an expected verdict here. The disagreement is
        // pinned separately by `token_without_exp_is_refused_although_node_accepts_it`.
        for case in cases {
            let name = case["name"].as_str().expect("name");
            assert!(
                case["payload"].get("exp").is_some(),
                "{name}: a vector without exp needs a decision against interface.md"
            );
            let verifier = verifier_for_case(&vectors, case);
            let token = case["token"].as_str().expect("token");
            let now = case["verify"]["clock_timestamp"].as_u64().expect("clock");
            let result = verifier.verify(token, now);
            let node = &case["jsonwebtoken_result"];
            match case["expected_verdict"].as_str().expect("verdict") {
                "accept" => {
                    let claims = result.unwrap_or_else(|error| panic!("{name}: refused: {error}"));
                    assert_eq!(Value::Object(claims), node["payload"], "{name}: claims");
                }
                "reject" => {
                    let error = result.expect_err(name);
                    let node_name = node["error_name"].as_str().expect("error_name");
                    assert_eq!(error.name(), socketcluster_name(node_name), "{name}: name");
                    if node_name != "KeyLookup" {
                        assert_eq!(error.to_string(), node["message"], "{name}: message");
                    }
                }
                other => panic!("{name}: unknown verdict {other}"),
            }
        }
    }

    #[test]
    fn socketcluster_deterministic_vector_is_reproduced_byte_for_byte() {
        // socketcluster-protocol.md 8.1; needs serde_json's preserve_order (claims keep their order).
        let keys = JwtKeys::hs256("test-secret-key").expect("keys");
        let claims = object(json!({"username": "alice", "role": "user", "iat": 1_700_000_000}));
        let token = TokenSigner::new(&keys)
            .expect("signer")
            .sign(claims, Duration::from_secs(86_400), 1_234)
            .expect("sign");
        assert_eq!(
            token,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFsaWNlIiwicm9sZSI6InVzZXIiLCJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDA4NjQwMH0.vWcUKs27foIloUQCdoSUxaEOIExtqvcJ_---_5tMoJc"
        );
    }

    #[test]
    fn socketcluster_default_token_vector_is_reproduced() {
        let vectors = vectors();
        let case = vectors["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .find(|case| case["name"] == "socketcluster_default_token")
            .expect("case");
        let claims = object(json!({"username": "alice", "channels": ["user/42"]}));
        let token = TokenSigner::new(&JwtKeys::hs256(SECRET).expect("keys"))
            .expect("signer")
            .sign(claims, Duration::from_secs(86_400), 1_767_222_000)
            .expect("sign");
        assert_eq!(token, case["token"].as_str().expect("token"));
    }

    #[test]
    fn supplied_exp_is_kept_and_iat_appended_like_setauthtoken() {
        // Captured payload from spec 8.1: the app set exp itself, jsonwebtoken appended iat.
        let signer = TokenSigner::new(&JwtKeys::hs256(SECRET).expect("keys")).expect("signer");
        let claims = object(json!({"username": "short", "exp": 1_795_356_795u64}));
        let token = signer
            .sign(claims, Duration::from_secs(86_400), 1_795_356_793)
            .expect("sign");
        assert_eq!(
            decoded_payload_text(&token),
            r#"{"username":"short","exp":1795356795,"iat":1795356793}"#
        );
    }

    #[test]
    fn signer_adds_iat_then_exp_from_the_clock() {
        let signer = TokenSigner::new(&JwtKeys::hs256(SECRET).expect("keys")).expect("signer");
        let token = signer
            .sign(
                object(json!({"sub": "42"})),
                Duration::from_millis(90_999),
                1_000,
            )
            .expect("sign");
        // Whole seconds, as jsonwebtoken floors `iat + expiresIn`.
        assert_eq!(
            decoded_payload_text(&token),
            r#"{"sub":"42","iat":1000,"exp":1090}"#
        );
    }

    #[test]
    fn signer_refuses_claims_our_verifier_would_refuse() {
        let signer = TokenSigner::new(&JwtKeys::hs256(SECRET).expect("keys")).expect("signer");
        let day = Duration::from_secs(86_400);
        assert_eq!(
            signer.sign(object(json!({"exp": "soon"})), day, NOW),
            Err(TokenSignError::NonNumericClaim { claim: "exp" })
        );
        assert_eq!(
            signer.sign(object(json!({"iat": 1.5})), day, NOW),
            Err(TokenSignError::IatNotWholeSeconds)
        );
        assert_eq!(
            signer.sign(object(json!({"iat": u64::MAX})), day, NOW),
            Err(TokenSignError::ExpiryOverflow)
        );
    }

    fn assert_round_trip(keys: &JwtKeys) {
        let signer = TokenSigner::new(keys).expect("signer");
        let verifier = TokenVerifier::new(keys).expect("verifier");
        let token = signer
            .sign(
                object(json!({"sub": "alice", "user": {"role": "admin"}})),
                Duration::from_secs(60),
                NOW,
            )
            .expect("sign");
        let claims = verifier
            .verify(&token, NOW + 59)
            .expect("fresh token verifies");
        assert_eq!(
            Value::Object(claims),
            json!({"sub": "alice", "user": {"role": "admin"}, "iat": NOW, "exp": NOW + 60})
        );
        // Default leeway 30 s: still fine 89 s later, expired at 90 s.
        assert!(verifier.verify(&token, NOW + 89).is_ok());
        assert_eq!(
            verifier
                .verify(&token, NOW + 90)
                .expect_err("expired")
                .name(),
            "AuthTokenExpiredError"
        );
    }

    #[test]
    fn hs256_round_trip() {
        assert_round_trip(&JwtKeys::hs256(SECRET).expect("keys"));
    }

    #[test]
    fn rs256_round_trip() {
        assert_round_trip(
            &JwtKeys::rs256_pem(RSA_PUBLIC_PEM, Some(RSA_PRIVATE_PEM)).expect("keys"),
        );
    }

    #[test]
    fn es256_round_trip_with_jose_signature() {
        let keys = JwtKeys::es256_pem(EC_PUBLIC_PEM, Some(EC_PRIVATE_PEM)).expect("keys");
        assert_round_trip(&keys);
        let token = TokenSigner::new(&keys)
            .expect("signer")
            .sign(Map::new(), Duration::from_secs(60), NOW)
            .expect("sign");
        let signature = token.rsplit('.').next().expect("signature");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(signature).expect("base64url").len(),
            64
        );
    }

    #[test]
    fn a_verify_only_node_cannot_sign() {
        let keys = JwtKeys::rs256_pem(RSA_PUBLIC_PEM, None).expect("keys");
        assert!(!keys.can_sign());
        assert_eq!(
            TokenSigner::new(&keys).err(),
            Some(JwtKeyError::NoSigningKey)
        );
    }

    #[test]
    fn exp_leeway_boundaries() {
        let token = hs256_token(&format!(r#"{{"exp":{NOW}}}"#));
        let verifier = hs256_verifier(30);
        // jsonwebtoken's rule: expired once now >= exp + leeway.
        assert!(verifier.verify(&token, NOW + 29).is_ok());
        let error = verifier
            .verify(&token, NOW + 30)
            .expect_err("expired at exp + leeway");
        assert_eq!(
            error,
            AuthTokenError::Expired {
                expiry: Some("2026-01-01T00:00:00.000Z".to_owned())
            }
        );
        assert!(hs256_verifier(0).verify(&token, NOW - 1).is_ok());
        assert!(hs256_verifier(0).verify(&token, NOW).is_err());
    }

    #[test]
    fn nbf_leeway_boundaries() {
        let token = hs256_token(&format!(r#"{{"nbf":{},"exp":4102444800}}"#, NOW + 30));
        let verifier = hs256_verifier(30);
        assert!(
            verifier.verify(&token, NOW).is_ok(),
            "nbf == now + leeway is active"
        );
        let error = verifier
            .verify(&token, NOW - 1)
            .expect_err("not yet active");
        assert_eq!(error.name(), "AuthTokenNotBeforeError");
        assert!(!error.is_bad_token());
        assert!(hs256_verifier(0).verify(&token, NOW + 30).is_ok());
        assert!(hs256_verifier(0).verify(&token, NOW + 29).is_err());
    }

    #[test]
    fn leeway_is_validated() {
        let keys = JwtKeys::hs256(SECRET).expect("keys");
        let verifier = TokenVerifier::new(&keys).expect("verifier");
        assert_eq!(verifier.leeway(), DEFAULT_JWT_LEEWAY);
        assert!(verifier.clone().with_leeway(MAX_JWT_LEEWAY).is_ok());
        for too_large in [
            Duration::from_millis(60_001),
            Duration::from_secs(61),
            Duration::MAX,
        ] {
            assert_eq!(
                verifier.clone().with_leeway(too_large).err(),
                Some(JwtKeyError::LeewayTooLarge { leeway: too_large })
            );
        }
    }

    #[test]
    fn token_without_exp_is_refused_although_node_accepts_it() {
        // socketcluster-protocol.md 8.2: Node's jsonwebtoken accepts a token without exp forever.
        // interface.md ("exp is required") overrides that; SocketCluster has no name for this
        // failure, so it is the generic AuthTokenError (still a bad token).
        let token = hs256_token(r#"{"username":"alice","iat":1767222000}"#);
        let error = hs256_verifier(30)
            .verify(&token, NOW)
            .expect_err("exp required");
        assert_eq!(error, AuthTokenError::Failed(TokenFailure::MissingExp));
        assert_eq!(
            serde_json::to_string(&error.to_wire()).expect("json"),
            r#"{"message":"jwt exp claim is required","name":"AuthTokenError","isBadToken":true}"#
        );
        assert_eq!(error.reason(), "error");
    }

    const WEEK: u64 = 7 * 86_400;

    fn week_limited_verifier() -> TokenVerifier {
        hs256_verifier(30).with_max_lifetime(Duration::from_secs(WEEK))
    }

    #[test]
    fn max_lifetime_measures_exp_minus_iat() {
        let verifier = week_limited_verifier();
        let issued = NOW - 100;
        for (lifetime, accepted) in [(WEEK - 1, true), (WEEK, true), (WEEK + 1, false)] {
            let token = hs256_token(&format!(
                r#"{{"sub":"42","iat":{issued},"exp":{}}}"#,
                issued + lifetime
            ));
            let result = verifier.verify(&token, NOW);
            assert_eq!(result.is_ok(), accepted, "lifetime {lifetime}: {result:?}");
        }
        // Fractional time claims are compared like the others: a hair over is over.
        let token = hs256_token(&format!(r#"{{"iat":{NOW},"exp":{}.5}}"#, NOW + WEEK));
        assert!(verifier.verify(&token, NOW).is_err());
        // Without a limit (the verifier's own default) the same token is fine.
        assert!(hs256_verifier(30).verify(&token, NOW).is_ok());
    }

    #[test]
    fn max_lifetime_without_iat_counts_from_now() {
        let verifier = week_limited_verifier();
        for (remaining, accepted) in [(WEEK - 1, true), (WEEK, true), (WEEK + 1, false)] {
            let token = hs256_token(&format!(r#"{{"sub":"42","exp":{}}}"#, NOW + remaining));
            let result = verifier.verify(&token, NOW);
            assert_eq!(
                result.is_ok(),
                accepted,
                "remaining {remaining}: {result:?}"
            );
        }
        // The same token passes once enough of it has run out.
        let token = hs256_token(&format!(r#"{{"exp":{}}}"#, NOW + WEEK + 60));
        assert!(verifier.verify(&token, NOW).is_err());
        assert!(verifier.verify(&token, NOW + 60).is_ok());
    }

    #[test]
    fn a_too_long_lived_token_is_a_bad_invalid_token_naming_the_limit() {
        let verifier = week_limited_verifier();
        let token = hs256_token(&format!(
            r#"{{"sub":"42","iat":{NOW},"exp":{}}}"#,
            NOW + 365 * 86_400
        ));
        let error = verifier
            .verify(&token, NOW)
            .expect_err("a year is too long");
        assert_eq!(
            error,
            AuthTokenError::Invalid(InvalidTokenReason::LifetimeTooLong {
                max: Duration::from_secs(WEEK)
            })
        );
        assert_eq!(error.name(), "AuthTokenInvalidError");
        assert_eq!(error.reason(), "invalid");
        assert!(error.is_bad_token());
        assert_eq!(
            serde_json::to_string(&error.to_wire()).expect("json"),
            r#"{"message":"jwt lifetime exceeds the maximum token lifetime of 7d (--max-token-lifetime)","name":"AuthTokenInvalidError","isBadToken":true}"#
        );
        // Other limits are written the way an operator would write them.
        for (limit, text) in [(90 * 60, "90m"), (12 * 3_600, "12h"), (45, "45s")] {
            let error = hs256_verifier(30)
                .with_max_lifetime(Duration::from_secs(limit))
                .verify(&token, NOW)
                .expect_err("too long");
            assert!(error.to_string().contains(&format!(" {text} ")), "{error}");
        }
    }

    #[test]
    fn max_lifetime_comes_after_expiry_and_needs_a_numeric_iat() {
        let verifier = week_limited_verifier();
        // Expired and too long: the client hears "expired", as without the limit.
        let token = hs256_token(&format!(r#"{{"iat":0,"exp":{}}}"#, NOW - 3_600));
        assert_eq!(
            verifier.verify(&token, NOW).expect_err("expired").name(),
            "AuthTokenExpiredError"
        );
        let text_iat = hs256_token(&format!(r#"{{"iat":"today","exp":{}}}"#, NOW + 60));
        assert_eq!(
            verifier.verify(&text_iat, NOW),
            Err(InvalidTokenReason::InvalidIatValue.into())
        );
        // Without a limit iat is not looked at, as before.
        assert!(hs256_verifier(30).verify(&text_iat, NOW).is_ok());
    }

    #[test]
    fn tokens_sockhive_signs_itself_pass_the_default_limit() {
        let keys = JwtKeys::hs256(SECRET).expect("keys");
        let signer = TokenSigner::new(&keys).expect("signer");
        let verifier = TokenVerifier::new(&keys)
            .expect("verifier")
            .with_max_lifetime(Duration::from_secs(WEEK));
        assert_eq!(verifier.max_lifetime(), Some(Duration::from_secs(WEEK)));
        // --token-expiry 1d, /negotiate's 5m, and a token expiry raised to the limit itself.
        for lifetime in [86_400, 300, WEEK] {
            let token = signer
                .sign(
                    object(json!({"sub": "alice"})),
                    Duration::from_secs(lifetime),
                    NOW,
                )
                .expect("sign");
            assert!(verifier.verify(&token, NOW).is_ok(), "{lifetime}");
            assert!(
                verifier.verify(&token, NOW + lifetime / 2).is_ok(),
                "{lifetime}"
            );
        }
    }

    #[test]
    fn non_numeric_time_claims_are_invalid() {
        let verifier = hs256_verifier(30);
        let null_exp = hs256_token(r#"{"exp":null}"#);
        assert_eq!(
            verifier.verify(&null_exp, NOW),
            Err(InvalidTokenReason::InvalidExpValue.into())
        );
        let text_nbf = hs256_token(r#"{"nbf":"1767225600","exp":4102444800}"#);
        assert_eq!(
            verifier.verify(&text_nbf, NOW),
            Err(InvalidTokenReason::InvalidNbfValue.into())
        );
    }

    #[test]
    fn fractional_exp_is_compared_like_javascript() {
        let token = hs256_token(&format!(r#"{{"exp":{NOW}.5}}"#));
        assert!(hs256_verifier(0).verify(&token, NOW).is_ok());
        let error = hs256_verifier(0)
            .verify(&token, NOW + 1)
            .expect_err("expired");
        assert_eq!(
            error,
            AuthTokenError::Expired {
                expiry: Some("2026-01-01T00:00:00.500Z".to_owned())
            }
        );
    }

    #[test]
    fn alg_none_is_refused_in_every_spelling() {
        let verifier = hs256_verifier(30);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"42","exp":4102444800}"#);
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let unsigned = format!("{header}.{payload}.");
            assert_eq!(
                verifier.verify(&unsigned, NOW),
                Err(InvalidTokenReason::SignatureRequired.into()),
                "{alg} unsigned"
            );
            // Even a signature made with the right key does not make "none" acceptable.
            let signed = sign_raw(
                &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
                r#"{"sub":"42","exp":4102444800}"#,
                Algorithm::HS256,
                SECRET,
            );
            assert_eq!(
                verifier.verify(&signed, NOW),
                Err(InvalidTokenReason::InvalidAlgorithm.into()),
                "{alg} signed"
            );
        }
    }

    #[test]
    fn other_algorithms_are_refused_even_with_the_right_key() {
        let verifier = hs256_verifier(30);
        let payload = r#"{"sub":"42","exp":4102444800}"#;
        // Node accepts HS512 with a string key by default (spec 8.2); we pin HS256.
        for (header, algorithm) in [
            (r#"{"alg":"HS512","typ":"JWT"}"#, Algorithm::HS512),
            (r#"{"alg":"hs256","typ":"JWT"}"#, Algorithm::HS256),
            (r#"{"typ":"JWT"}"#, Algorithm::HS256),
            (r#"{"alg":["HS256"]}"#, Algorithm::HS256),
        ] {
            let token = sign_raw(header, payload, algorithm, SECRET);
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(InvalidTokenReason::InvalidAlgorithm.into()),
                "{header}"
            );
        }
        let rs_verifier =
            TokenVerifier::new(&JwtKeys::rs256_pem(RSA_PUBLIC_PEM, None).expect("keys"))
                .expect("verifier");
        let hs_token = sign_raw(
            r#"{"alg":"HS256"}"#,
            payload,
            Algorithm::HS256,
            RSA_PUBLIC_PEM,
        );
        assert_eq!(
            rs_verifier.verify(&hs_token, NOW),
            Err(InvalidTokenReason::InvalidAlgorithm.into())
        );
    }

    #[test]
    fn malformed_tokens_are_refused_with_nodes_messages() {
        let verifier = hs256_verifier(30);
        let good = hs256_token(r#"{"exp":4102444800}"#);
        let (header, rest) = good.split_once('.').expect("dots");
        let (payload, signature) = rest.split_once('.').expect("dots");
        let not_json = URL_SAFE_NO_PAD.encode("{alg: HS256}");
        let array = URL_SAFE_NO_PAD.encode(r#"["HS256"]"#);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "jwt must be provided"),
            ("abc".to_owned(), "jwt malformed"),
            (format!("{header}.{payload}"), "jwt malformed"),
            (format!("{good}.extra"), "jwt malformed"),
            ("garbage.token.here".to_owned(), "invalid token"),
            (format!("{not_json}.{payload}.{signature}"), "invalid token"),
            (format!("{array}.{payload}.{signature}"), "invalid token"),
            (format!("{header}.{array}.{signature}"), "invalid token"),
            (format!("{header}=.{payload}.{signature}"), "invalid token"),
            (format!("{header}.{payload}.{signature}="), "invalid token"),
            (format!("{header}.{payload}.a+b/"), "invalid token"),
            (format!(".{payload}.{signature}"), "invalid token"),
            (format!("{header}.{payload}."), "jwt signature is required"),
            (
                format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])),
                "invalid signature",
            ),
        ];
        for (token, message) in cases {
            let error = verifier.verify(&token, NOW).expect_err(&token);
            assert_eq!(error.to_string(), message, "{token:?}");
            assert_eq!(error.name(), "AuthTokenInvalidError", "{token:?}");
            assert!(error.is_bad_token());
        }
    }

    #[test]
    fn kid_is_only_a_lookup_key() {
        let payload = r#"{"sub":"42","exp":4102444800}"#;
        let set = JwtKeys::key_set(JwtAlgorithm::Hs256)
            .with_kid_secret("k1", "first-secret")
            .and_then(|set| set.with_kid_secret("k2", "second-secret"))
            .expect("key set");
        let verifier = TokenVerifier::new(&set).expect("verifier");
        let k2 = sign_raw(
            r#"{"alg":"HS256","kid":"k2"}"#,
            payload,
            Algorithm::HS256,
            "second-secret",
        );
        assert!(verifier.verify(&k2, NOW).is_ok());
        let k2_signed_with_k1 = sign_raw(
            r#"{"alg":"HS256","kid":"k2"}"#,
            payload,
            Algorithm::HS256,
            "first-secret",
        );
        assert_eq!(
            verifier.verify(&k2_signed_with_k1, NOW),
            Err(InvalidTokenReason::InvalidSignature.into())
        );
        for header in [
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS256","kid":"k3"}"#,
            r#"{"alg":"HS256","kid":1}"#,
        ] {
            let token = sign_raw(header, payload, Algorithm::HS256, "first-secret");
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(InvalidTokenReason::UnknownKid.into()),
                "{header}"
            );
        }
        // interface.md: an unknown kid is refused even when a single default key would verify it.
        let single = hs256_verifier(30);
        let with_kid = sign_raw(
            r#"{"alg":"HS256","kid":"any"}"#,
            payload,
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(
            single.verify(&with_kid, NOW),
            Err(InvalidTokenReason::UnknownKid.into())
        );
    }

    #[test]
    fn audience_accepts_a_string_or_an_array_member() {
        let verifier = hs256_verifier(30).with_audience("wss://example/socketcluster/");
        for (payload, accepted) in [
            (
                r#"{"aud":"wss://example/socketcluster/","exp":4102444800}"#,
                true,
            ),
            (
                r#"{"aud":["other","wss://example/socketcluster/"],"exp":4102444800}"#,
                true,
            ),
            (r#"{"aud":"other","exp":4102444800}"#, false),
            (r#"{"exp":4102444800}"#, false),
        ] {
            let result = verifier.verify(&hs256_token(payload), NOW);
            assert_eq!(result.is_ok(), accepted, "{payload}");
        }
    }

    #[test]
    fn wire_objects_match_captured_socketcluster_frames() {
        let verifier = hs256_verifier(0);
        // socketcluster-protocol.md 8.4, `#authenticate` with "garbage.token.here".
        let invalid = verifier
            .verify("garbage.token.here", NOW)
            .expect_err("garbage");
        assert_eq!(
            serde_json::to_string(&invalid.to_wire()).expect("json"),
            r#"{"message":"invalid token","name":"AuthTokenInvalidError","isBadToken":true}"#
        );
        // 8.4, token with a future nbf (2026-11-22T14:22:54Z).
        let future = hs256_token(r#"{"nbf":1795357374,"exp":4102444800}"#);
        let not_before = verifier.verify(&future, NOW).expect_err("not active");
        assert_eq!(
            serde_json::to_string(&not_before.to_wire()).expect("json"),
            r#"{"message":"jwt not active","name":"AuthTokenNotBeforeError","date":"2026-11-22T14:22:54.000Z","isBadToken":false}"#
        );
        assert_eq!(not_before.reason(), "not_before");
        let expired = verifier
            .verify(&hs256_token(r#"{"exp":1795357374}"#), 1_795_357_374)
            .expect_err("expired");
        assert_eq!(
            serde_json::to_string(&expired.to_wire()).expect("json"),
            r#"{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2026-11-22T14:22:54.000Z","isBadToken":true}"#
        );
        assert_eq!(expired.reason(), "expired");
        assert_eq!(invalid.reason(), "invalid");
        let out_of_range = AuthTokenError::Expired { expiry: None };
        assert_eq!(out_of_range.to_wire()["expiry"], Value::Null);
    }

    #[test]
    fn dates_are_formatted_like_node() {
        // Expected strings observed with Node 20: JSON.stringify(new Date(seconds * 1000)).
        for (seconds, expected) in [
            (0.0, Some("1970-01-01T00:00:00.000Z")),
            (-1.0, Some("1969-12-31T23:59:59.000Z")),
            (1.5, Some("1970-01-01T00:00:01.500Z")),
            (-1.5, Some("1969-12-31T23:59:58.500Z")),
            (1_795_356_783.0, Some("2026-11-22T14:13:03.000Z")),
            (253_402_300_800.0, Some("+010000-01-01T00:00:00.000Z")),
            (-62_198_755_200.0, Some("-000001-01-01T00:00:00.000Z")),
            (-62_167_219_200.0, Some("0000-01-01T00:00:00.000Z")),
            (-62_167_219_200.000_1, Some("0000-01-01T00:00:00.000Z")),
            (8.64e12, Some("+275760-09-13T00:00:00.000Z")),
            (8.64e12 + 0.001, None),
            (-8.64e12, Some("-271821-04-20T00:00:00.000Z")),
            (1e300, None),
            (-0.0009, Some("1970-01-01T00:00:00.000Z")),
            (1_767_225_600.999_9, Some("2026-01-01T00:00:00.999Z")),
        ] {
            assert_eq!(
                javascript_date_json(seconds).as_deref(),
                expected,
                "{seconds}"
            );
        }
    }

    #[test]
    fn civil_dates_agree_with_the_time_crate_across_its_range() {
        let first = time::Date::MIN.to_julian_day() - 2_440_588;
        let last = time::Date::MAX.to_julian_day() - 2_440_588;
        for days in (i64::from(first)..=i64::from(last))
            .step_by(997)
            .chain([0, -1, 59, 60, 11_016])
        {
            let julian_day = i32::try_from(days + 2_440_588).expect("in range");
            let date = time::Date::from_julian_day(julian_day).expect("date");
            let (year, month, day) = civil_date_from_days(days);
            assert_eq!(
                (year, month, day),
                (
                    i64::from(date.year()),
                    u32::from(u8::from(date.month())),
                    u32::from(date.day())
                )
            );
            if (0..=9999).contains(&year) {
                let text = javascript_date_json(days as f64 * 86_400.0).expect("in JS range");
                let expected = format!("{:04}-{:02}-{:02}T00:00:00.000Z", year, month, day);
                assert_eq!(text, expected);
            }
        }
    }

    #[test]
    fn algorithm_names_are_exact() {
        assert_eq!("HS256".parse(), Ok(JwtAlgorithm::Hs256));
        assert_eq!("RS256".parse(), Ok(JwtAlgorithm::Rs256));
        assert_eq!("ES256".parse(), Ok(JwtAlgorithm::Es256));
        for refused in ["hs256", "none", "HS512", ""] {
            assert_eq!(
                refused.parse::<JwtAlgorithm>(),
                Err(JwtKeyError::UnknownAlgorithm(refused.to_owned()))
            );
        }
        assert_eq!(JwtAlgorithm::default(), JwtAlgorithm::Hs256);
        assert_eq!(
            serde_json::to_string(&JwtAlgorithm::Es256).expect("json"),
            r#""ES256""#
        );
    }

    #[test]
    fn bad_key_configuration_is_refused_at_start_up() {
        assert_eq!(JwtKeys::hs256("").err(), Some(JwtKeyError::EmptySecret));
        assert_eq!(
            JwtKeys::hs256(RSA_PUBLIC_PEM).err(),
            Some(JwtKeyError::SecretLooksLikePem)
        );
        // Swapped files.
        assert!(matches!(
            JwtKeys::rs256_pem(RSA_PRIVATE_PEM, None),
            Err(JwtKeyError::WrongPemLabel {
                expected: "public key",
                ..
            })
        ));
        assert!(matches!(
            JwtKeys::rs256_pem(RSA_PUBLIC_PEM, Some(RSA_PUBLIC_PEM)),
            Err(JwtKeyError::WrongPemLabel {
                expected: "private key",
                ..
            })
        ));
        assert!(matches!(
            JwtKeys::rs256_pem("not a pem", None),
            Err(JwtKeyError::WrongPemLabel { found: None, .. })
        ));
        // Keys of the other family.
        assert!(matches!(
            JwtKeys::es256_pem(RSA_PUBLIC_PEM, None),
            Err(JwtKeyError::UnusableKey { .. })
        ));
        assert!(matches!(
            JwtKeys::rs256_pem(EC_PUBLIC_PEM, None),
            Err(JwtKeyError::UnusableKey { .. })
        ));
        assert!(matches!(
            JwtKeys::es256_pem(EC_PUBLIC_PEM, Some(EC_P384_PRIVATE_PEM)),
            Err(JwtKeyError::UnusableKey {
                role: "private",
                ..
            })
        ));
        assert_eq!(
            JwtKeys::rs256_pem(RSA_PUBLIC_PEM, Some(RSA_1024_PRIVATE_PEM)).err(),
            Some(JwtKeyError::RsaKeyTooSmall { bits: 1024 })
        );
        // A private key from another pair (the vectors' public key).
        let vectors = vectors();
        let other_public = vectors["keys"]["rsa_public"]["pem"].as_str().expect("pem");
        assert_eq!(
            JwtKeys::rs256_pem(other_public, Some(RSA_PRIVATE_PEM)).err(),
            Some(JwtKeyError::KeyPairMismatch {
                algorithm: JwtAlgorithm::Rs256
            })
        );
        let other_ec_public = vectors["keys"]["ec_public"]["pem"].as_str().expect("pem");
        assert_eq!(
            JwtKeys::es256_pem(other_ec_public, Some(EC_PRIVATE_PEM)).err(),
            Some(JwtKeyError::KeyPairMismatch {
                algorithm: JwtAlgorithm::Es256
            })
        );
    }

    #[test]
    fn key_sets_stay_consistent() {
        let empty = JwtKeys::key_set(JwtAlgorithm::Hs256);
        assert_eq!(
            TokenVerifier::new(&empty).err(),
            Some(JwtKeyError::NoVerifyingKey)
        );
        assert_eq!(
            empty.clone().with_kid_secret("", "s").err(),
            Some(JwtKeyError::EmptyKid)
        );
        let one = empty.with_kid_secret("k1", "s").expect("first");
        assert_eq!(
            one.with_kid_secret("k1", "t").err(),
            Some(JwtKeyError::DuplicateKid("k1".to_owned()))
        );
        let rs = JwtKeys::rs256_pem(RSA_PUBLIC_PEM, None).expect("keys");
        assert!(matches!(
            rs.clone().with_kid_secret("k", "s"),
            Err(JwtKeyError::AlgorithmMismatch { .. })
        ));
        assert!(JwtKeys::hs256(SECRET)
            .expect("keys")
            .with_kid_public_key_pem("k", RSA_PUBLIC_PEM)
            .is_err());
        let rotated = rs.with_kid_public_key_pem("ec?", EC_PUBLIC_PEM);
        assert!(rotated.is_err(), "an EC key cannot join an RS256 set");
        let ok = JwtKeys::rs256_pem(RSA_PUBLIC_PEM, Some(RSA_PRIVATE_PEM))
            .and_then(|keys| keys.with_kid_public_key_pem("old", RSA_PUBLIC_PEM))
            .expect("rotation set");
        assert!(format!("{ok:?}").contains("\"old\""));
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let keys = JwtKeys::hs256(SECRET).expect("keys");
        let verifier = TokenVerifier::new(&keys).expect("verifier");
        let signer = TokenSigner::new(&keys).expect("signer");
        for text in [
            format!("{keys:?}"),
            format!("{verifier:?}"),
            format!("{signer:?}"),
        ] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("socketcluster-auth-key"), "{text}");
        }
    }
}
