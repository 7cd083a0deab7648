//! JWT decode and verify. The first byte picks the mode:
//! - even: the rest is a token as a client sends it, verified by an HS256,
//!   an RS256, an ES256 and a `kid` key-set verifier (the vectors' keys);
//! - odd: the rest is `<8-byte clock><header JSON>\n<claims JSON>`, made
//!   into a token with a correct HS256 signature, so the claim checks past
//!   the signature are reached. The same input is also signed with HMAC
//!   keyed by the RSA and EC public keys' PEM text (key confusion) and sent
//!   to the RS256/ES256 verifiers, which must refuse it whatever it says.
//!
//! Then `TokenSigner` signs the claims and the verifier must accept the
//! token it made, with the claims it was given.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use sha2::Sha256;
use sockhive_shared::jwt::{JwtAlgorithm, JwtKeys, TokenSigner, TokenVerifier};

/// The committed copy of shared/vectors/jwt.json: its keys and clock.
const VECTORS: &str = include_str!("../../tests/vectors/jwt.json");

struct Setup {
    now: u64,
    hs_secret: String,
    rsa_pem: String,
    ec_pem: String,
    hs: TokenVerifier,
    hs_strict: TokenVerifier,
    rs: TokenVerifier,
    es: TokenVerifier,
    kid: TokenVerifier,
    signer: TokenSigner,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let vectors: Value = serde_json::from_str(VECTORS).expect("jwt.json is JSON");
        let keys = &vectors["keys"];
        let text = |value: &Value| value.as_str().expect("a string").to_owned();
        let hs_secret = text(&keys["hs_secret"]["value"]);
        let rsa_pem = text(&keys["rsa_public"]["pem"]);
        let ec_pem = text(&keys["ec_public"]["pem"]);
        let hs_keys = JwtKeys::hs256(&hs_secret).expect("HS256 key");
        let mut kid_keys = JwtKeys::key_set(JwtAlgorithm::Hs256);
        for (kid, secret) in keys["kid_keyset"]["keys"].as_object().expect("kid map") {
            kid_keys = kid_keys
                .with_kid_secret(kid, secret.as_str().expect("secret"))
                .expect("kid key");
        }
        let verifier = |keys: &JwtKeys| TokenVerifier::new(keys).expect("verifier");
        Setup {
            now: vectors["verify_at"].as_u64().expect("verify_at"),
            hs: verifier(&hs_keys),
            hs_strict: verifier(&hs_keys)
                .with_leeway(Duration::ZERO)
                .expect("leeway")
                .with_audience("https://example.test/hub")
                .with_max_lifetime(Duration::from_secs(86_400)),
            rs: verifier(&JwtKeys::rs256_pem(&rsa_pem, None).expect("RSA key")),
            es: verifier(&JwtKeys::es256_pem(&ec_pem, None).expect("EC key")),
            kid: verifier(&kid_keys),
            signer: TokenSigner::new(&hs_keys).expect("signer"),
            hs_secret,
            rsa_pem,
            ec_pem,
        }
    })
}

fn hs256_token(header: &[u8], claims: &[u8], secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let setup = setup();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        for verifier in [
            &setup.hs,
            &setup.hs_strict,
            &setup.rs,
            &setup.es,
            &setup.kid,
        ] {
            if let Err(error) = verifier.verify(token, setup.now) {
                let _ = (error.name(), error.reason(), error.to_wire());
            }
        }
        return;
    }
    let Some((clock, rest)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let now = u64::from_le_bytes(*clock);
    let (header, claims) = sockhive_fuzz::split_once(rest, b'\n');
    let token = hs256_token(header, claims, setup.hs_secret.as_bytes());
    for verifier in [&setup.hs, &setup.hs_strict, &setup.kid] {
        if let Err(error) = verifier.verify(&token, now) {
            let _ = (error.name(), error.reason(), error.to_wire());
        }
    }
    for (pem, verifier) in [(&setup.rsa_pem, &setup.rs), (&setup.ec_pem, &setup.es)] {
        let forged = hs256_token(header, claims, pem.as_bytes());
        let verdict = verifier.verify(&forged, now);
        assert!(
            verdict.is_err(),
            "HMAC-signed token accepted by {verifier:?}: {verdict:?}"
        );
    }
    sign_then_verify(setup, claims, now);
});

/// A token the node signed itself verifies, while it is fresh, to the claims signed.
fn sign_then_verify(setup: &Setup, claims: &[u8], now: u64) {
    let Ok(claims) = serde_json::from_slice::<Map<String, Value>>(claims) else {
        return;
    };
    let lifetime = Duration::from_secs(3_600);
    let Ok(token) = setup.signer.sign(claims.clone(), lifetime, now) else {
        return;
    };
    // The clock and the time claims the signer adds stay exact as JavaScript numbers.
    let fresh = now < (1 << 53) - 3_600
        && !["iat", "exp", "nbf"]
            .iter()
            .any(|claim| claims.contains_key(*claim));
    if !fresh {
        let _ = setup.hs.verify(&token, now);
        return;
    }
    let verified = setup
        .hs
        .verify(&token, now)
        .unwrap_or_else(|error| panic!("own token {token:?} refused: {error:?}"));
    let mut expected = claims;
    expected.insert("iat".into(), now.into());
    expected.insert("exp".into(), (now + 3_600).into());
    // Through JSON text once, as the token carries them: serde_json (without its
    // `float_roundtrip` feature) may read a float back one ulp off what it wrote.
    let expected: Map<String, Value> =
        serde_json::from_slice(&serde_json::to_vec(&expected).expect("claims serialize"))
            .expect("serialized claims parse");
    assert_eq!(verified, expected);
}
