//! Who a socket is logged in as, and for how long.
//!
//! One rule for every protocol ([`Login::set`]): a login ends when its
//! token's `exp` (plus `--jwt-leeway`) passes, unless a web session backs it
//! (a cookie or `session_id` login, or a token minted from one): then the
//! session decides, through the logout watch. With `--token-renew-before`
//! the token is re-signed that long before `exp` and handed to the client.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::auth::now_unix;
use crate::auth::passport::SessionLogin;
use crate::auth::{Claims, Identity};
use crate::Worker;

/// A verified login.
#[derive(Debug)]
struct LoggedIn {
    /// Shared with the socket's registry entry: one copy per socket, as
    /// compact text (issue 19).
    claims: Claims,
    /// When the login stops being valid, when its token bounds it.
    expires_at: Option<Instant>,
    /// When to re-sign and hand out a fresh token.
    renew_at: Option<Instant>,
    /// The web session behind the login, watched for logout (its `user` is
    /// not kept: the claims' `user` is the socket's one copy).
    session: Option<SessionLogin>,
}

/// What the login's clock says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginDue {
    /// Nothing due.
    Idle,
    /// Re-sign the token.
    Renew,
    /// The login ran out.
    Expired,
}

/// A socket's login; anonymous until [`Login::set`].
#[derive(Debug, Default)]
pub struct Login {
    // Boxed: an anonymous socket carries one pointer, not the claims map,
    // instants and session.
    state: Option<Box<LoggedIn>>,
}

/// When a login with these claims expires and is renewed.
fn clock(
    claims: &Map<String, Value>,
    session_backed: bool,
    leeway: Duration,
    renew_before: Option<Duration>,
) -> (Option<Instant>, Option<Instant>) {
    let now = Instant::now();
    let remaining = claims
        .get("exp")
        .and_then(Value::as_f64)
        .map(|exp| Duration::from_secs_f64((exp - now_unix() as f64).clamp(0.0, 1e10)));
    let expires_at = match (remaining, session_backed) {
        (Some(remaining), false) => Some(now + remaining + leeway),
        _ => None,
    };
    let renew_at = match (remaining, renew_before) {
        (Some(remaining), Some(before)) => Some(now + remaining.saturating_sub(before)),
        _ => None,
    };
    (expires_at, renew_at)
}

impl Login {
    /// The verified claims, if logged in.
    pub fn claims(&self) -> Option<&Claims> {
        self.state.as_ref().map(|s| &s.claims)
    }

    /// The verified claims as the registry keeps them: the same allocation.
    pub fn shared_claims(&self) -> Option<Claims> {
        self.state.as_ref().map(|s| s.claims.clone())
    }

    /// True while logged in.
    pub fn is_authenticated(&self) -> bool {
        self.state.is_some()
    }

    /// The web session id behind the login, for the registry's logout routing.
    pub fn web_session(&self) -> Option<String> {
        self.state
            .as_ref()
            .and_then(|s| s.session.as_ref())
            .map(|s| s.sid.clone())
    }

    /// Takes on a verified identity; returns the token to hand the client, if
    /// one was minted for it.
    pub fn set(&mut self, worker: &Worker, identity: Identity) -> Option<String> {
        let Identity {
            claims,
            mut session,
            minted_token,
            ..
        } = identity;
        // Watch the new session before unwatching the old: a re-login to the
        // same session must not drop its watch in between.
        if let (Some(login), Some(sessions)) = (&session, worker.credentials.sessions.as_ref()) {
            sessions
                .watcher
                .watch_user(&login.sid, &login.passport_user, &login.user);
        }
        if let Some(login) = session.as_mut() {
            // The claims' `user` is the socket's copy (issue 19: one per socket).
            login.user = Value::Null;
        }
        self.clear(worker);
        let (expires_at, renew_at) = clock(
            &claims,
            session.is_some(),
            worker.config.auth.jwt_leeway,
            worker.credentials.jwt.renew_before,
        );
        self.state = Some(Box::new(LoggedIn {
            claims: Claims::new(&claims),
            expires_at,
            renew_at,
            session,
        }));
        minted_token
    }

    /// Forgets the login (and its session watch).
    pub fn clear(&mut self, worker: &Worker) {
        let Some(state) = self.state.take() else {
            return;
        };
        if let (Some(login), Some(sessions)) =
            (&state.session, worker.credentials.sessions.as_ref())
        {
            sessions.watcher.unwatch(&login.sid, &login.passport_user);
        }
    }

    /// The next moment the login's clock needs the socket.
    pub fn next_timer(&self) -> Option<Instant> {
        let state = self.state.as_ref()?;
        match (state.expires_at, state.renew_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What is due at `now`.
    pub fn due(&self, now: Instant) -> LoginDue {
        let Some(state) = self.state.as_ref() else {
            return LoginDue::Idle;
        };
        if state.expires_at.is_some_and(|at| at <= now) {
            LoginDue::Expired
        } else if state.renew_at.is_some_and(|at| at <= now) {
            LoginDue::Renew
        } else {
            LoginDue::Idle
        }
    }

    /// Takes on the app's new record of a session login's user: the claims'
    /// `user` (and the `channels` it lists) follow it, re-signed; the new
    /// token, or `None` when the login is not a session's or cannot be signed.
    pub fn update_user(&mut self, worker: &Worker, user: Value) -> Option<String> {
        let state = self.state.as_mut()?;
        state.session.as_ref()?;
        // The registry's copy follows at the next `set_login`.
        let mut claims = state.claims.to_map();
        match crate::auth::channels_claim(&user) {
            Some(channels) => claims.insert("channels".into(), channels),
            None => claims.remove("channels"),
        };
        claims.insert("user".into(), user);
        self.renew_from(worker, claims)
    }

    /// Re-signs the login's claims with a fresh lifetime; the new token, or
    /// `None` when signing is impossible (the login then runs out as it would
    /// have without renewal).
    pub fn renew(&mut self, worker: &Worker) -> Option<String> {
        let claims = self.state.as_ref()?.claims.to_map();
        self.renew_from(worker, claims)
    }

    /// [`Login::renew`] with these claims.
    fn renew_from(&mut self, worker: &Worker, mut claims: Map<String, Value>) -> Option<String> {
        let state = self.state.as_mut()?;
        claims.remove("iat");
        claims.remove("exp");
        let signed = worker
            .credentials
            .jwt
            .sign(claims)
            .map_err(|e| tracing::warn!(error = %e, "cannot renew a socket's token"))
            .ok()
            .and_then(|token| {
                worker
                    .credentials
                    .jwt
                    .verify(&token)
                    .ok()
                    .map(|fresh| (token, fresh))
            });
        let Some((token, fresh)) = signed else {
            state.renew_at = None;
            return None;
        };
        let (expires_at, renew_at) = clock(
            &fresh,
            state.session.is_some(),
            worker.config.auth.jwt_leeway,
            worker.credentials.jwt.renew_before,
        );
        state.claims = Claims::new(&fresh);
        state.expires_at = expires_at;
        state.renew_at = renew_at;
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(exp_in: u64) -> Map<String, Value> {
        let Value::Object(claims) = json!({"sub": "a", "exp": now_unix() + exp_in}) else {
            unreachable!("an object")
        };
        claims
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_login_expires_at_exp_plus_leeway_and_a_session_backed_one_does_not() {
        let now = Instant::now();
        let leeway = Duration::from_secs(30);
        let (expires, renew) = clock(&claims(100), false, leeway, None);
        let expires = expires.expect("a token login expires");
        assert!(
            expires >= now + Duration::from_secs(129) && expires <= now + Duration::from_secs(130)
        );
        assert_eq!(renew, None);
        // The session's logout ends it instead; renewal still keeps its token fresh.
        let (expires, renew) = clock(&claims(100), true, leeway, Some(Duration::from_secs(10)));
        assert_eq!(expires, None);
        let renew = renew.expect("renewal is due before exp");
        assert!(renew <= now + Duration::from_secs(90));
        // No `exp`: nothing to expire or renew.
        assert_eq!(
            clock(&Map::new(), false, leeway, Some(leeway)),
            (None, None)
        );
    }
}
