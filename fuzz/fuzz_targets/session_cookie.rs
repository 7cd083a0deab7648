//! Session cookies (express-session's `connect.sid`): the input is split at
//! the first `\n` into `Cookie` header values (separated by `\r`, as
//! repeated headers arrive) and a `session_id` query value. Runs the header
//! parser, the lookup and the signature check under every policy, and checks
//! that whatever cookie-signature's `sign` makes from the input verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockhive_worker::auth::passport::cookie::{
    find_cookie, parse_cookie_header, sign, SessionCookieVerifier,
};
use sockhive_worker::auth::passport::{DuplicateCookiePolicy, DEFAULT_COOKIE_NAME};

/// Two secrets, as a rotation configures them; the second only verifies.
const SECRETS: [&str; 2] = ["keyboard cat", "previous secret"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (headers, query) = text.split_once('\n').unwrap_or((text, ""));
    let headers: Vec<&str> = headers.split('\r').collect();
    for header in &headers {
        let pairs = parse_cookie_header(header);
        // First occurrence wins, so names are unique.
        for (index, (name, _)) in pairs.iter().enumerate() {
            assert!(pairs[..index].iter().all(|(earlier, _)| earlier != name));
        }
    }
    let _ = find_cookie(headers.iter().copied(), DEFAULT_COOKIE_NAME);

    let secrets: Vec<String> = SECRETS.iter().map(|secret| secret.to_string()).collect();
    for policy in [
        DuplicateCookiePolicy::Reject,
        DuplicateCookiePolicy::FirstWins,
    ] {
        for signed_query in [false, true] {
            let verifier = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &secrets)
                .with_duplicate_policy(policy)
                .with_signed_query_session_id(signed_query);
            let query = (!query.is_empty()).then_some(query);
            let _ = verifier.verify_request(headers.iter().copied(), query);
            let _ = verifier.verify_value(text);
        }
    }

    // Any session id signed with a configured secret verifies, naming that secret.
    let verifier = SessionCookieVerifier::new(DEFAULT_COOKIE_NAME, &secrets);
    for (index, secret) in SECRETS.iter().enumerate() {
        let cookie = format!("s:{}", sign(text, secret));
        let signed = verifier.verify_value(&cookie).unwrap_or_else(|rejection| {
            panic!("{cookie:?} signed with secret {index}: {rejection:?}")
        });
        assert_eq!(signed.sid, text);
        assert_eq!(signed.secret_index, index);
    }
});
