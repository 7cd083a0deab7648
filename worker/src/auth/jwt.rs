//! Verifying the JWTs sockets present and signing the ones sockhive hands out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sockhive_shared::config::AuthConfig;
use sockhive_shared::jwt::{
    AuthTokenError, JwtAlgorithm, JwtKeyError, JwtKeys, TokenSignError, TokenSigner, TokenVerifier,
};

/// The node's JWT keys, built once per worker from the configuration.
pub struct Auth {
    verifier: TokenVerifier,
    /// Absent when only a public key is configured: the node then verifies but cannot mint.
    signer: Option<TokenSigner>,
    /// Lifetime of tokens this node signs.
    pub token_expiry: Duration,
    /// Re-sign this long before a socket's token expires, when set.
    pub renew_before: Option<Duration>,
}

/// Seconds since the epoch: the clock JWT claims are compared against.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Builds verifier and signer for the configured algorithm.
    pub fn new(config: &AuthConfig) -> Result<Auth, JwtKeyError> {
        let public = config.auth_public_key_pem.as_deref().unwrap_or("");
        let private = config.auth_private_key_pem.as_deref();
        let keys = match config.auth_algorithm {
            JwtAlgorithm::Hs256 => JwtKeys::hs256(&config.auth_key)?,
            JwtAlgorithm::Rs256 => JwtKeys::rs256_pem(public, private)?,
            JwtAlgorithm::Es256 => JwtKeys::es256_pem(public, private)?,
        };
        let verifier = TokenVerifier::new(&keys)?
            .with_leeway(config.jwt_leeway)?
            .with_max_lifetime(config.max_token_lifetime);
        let signer = if keys.can_sign() {
            Some(TokenSigner::new(&keys)?)
        } else {
            None
        };
        Ok(Auth {
            verifier,
            signer,
            token_expiry: config.token_expiry,
            renew_before: config.token_renew_before,
        })
    }

    /// Verifies a presented token now; the claims on success.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthTokenError> {
        self.verifier.verify(token, now_unix())
    }

    /// Signs claims with the node's default expiry (unless they carry `exp`).
    pub fn sign(&self, claims: Map<String, Value>) -> Result<String, TokenSignError> {
        self.sign_for(claims, self.token_expiry)
    }

    /// Signs claims that carry their own `iat` and `exp`, as they are: the
    /// caller keeps its claims and no copy is made to sign them.
    pub fn sign_as_is(&self, claims: &Map<String, Value>) -> Result<String, TokenSignError> {
        match &self.signer {
            Some(signer) => signer.sign_as_is(claims),
            None => Err(TokenSignError::NoSigningKey),
        }
    }

    /// Signs claims with a given lifetime (unless they carry `exp`).
    pub fn sign_for(
        &self,
        claims: Map<String, Value>,
        lifetime: Duration,
    ) -> Result<String, TokenSignError> {
        match &self.signer {
            Some(signer) => signer.sign(claims, lifetime, now_unix()),
            None => Err(TokenSignError::NoSigningKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(max_token_lifetime: Duration) -> AuthConfig {
        AuthConfig {
            auth_key: "auth-test-key".into(),
            auth_key_is_random: false,
            auth_algorithm: JwtAlgorithm::Hs256,
            auth_private_key_pem: None,
            auth_public_key_pem: None,
            jwt_leeway: Duration::from_secs(30),
            token_expiry: Duration::from_secs(86_400),
            token_renew_before: None,
            max_token_lifetime,
            require_auth: false,
            reject_at_upgrade: false,
        }
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_configured_max_token_lifetime_is_enforced() {
        let auth = Auth::new(&config(Duration::from_secs(2 * 86_400))).expect("auth");
        // Its own tokens (token_expiry 1d) pass.
        let own = auth.sign(claims(json!({"sub": "alice"}))).expect("sign");
        assert!(auth.verify(&own).is_ok());
        // A token someone signed with the same key for three days does not.
        let long = auth
            .sign_for(
                claims(json!({"sub": "alice"})),
                Duration::from_secs(3 * 86_400),
            )
            .expect("sign");
        let error = auth.verify(&long).expect_err("over the limit");
        assert_eq!(error.name(), "AuthTokenInvalidError");
        assert!(error.is_bad_token());
        assert!(error.to_string().contains("2d"), "{error}");
        // Under a looser limit the same token is fine.
        let loose = Auth::new(&config(Duration::from_secs(7 * 86_400))).expect("auth");
        assert!(loose.verify(&long).is_ok());
    }
}
