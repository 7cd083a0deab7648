//! The server under test as the scenarios see it: where to connect, which
//! protocol, how its sockets authenticate, and which processes to account.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::client::{ClientError, Completion, Connection, Credential, Outcome, Protocol};
use crate::credentials::{login_jwt, Login};
use crate::polling::PollingSocket;

/// How the sockets of a target prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// express-session cookie on the upgrade, session read from Redis.
    Cookie,
    /// HS256 JWT in the protocol handshake.
    Jwt,
    /// No authentication at all (the bare ceiling).
    None,
}

/// The credentials of every seeded login, valid and forged.
pub struct CredentialBook {
    cookies: Vec<String>,
    forged_cookies: Vec<String>,
    jwts: Vec<String>,
    forged_jwts: Vec<String>,
}

impl CredentialBook {
    /// Builds cookies signed with `secret` and JWTs signed with `jwt_key` for
    /// `logins`; forged ones are signed with keys the servers do not know.
    pub fn new(logins: &[Login], secret: &str, jwt_key: &str, now_unix: u64) -> CredentialBook {
        let forged_secret = format!("{secret}-forged");
        let forged_key = format!("{jwt_key}-forged");
        CredentialBook {
            cookies: logins.iter().map(|l| l.cookie_header(secret)).collect(),
            forged_cookies: logins
                .iter()
                .map(|l| l.cookie_header(&forged_secret))
                .collect(),
            jwts: logins
                .iter()
                .map(|l| login_jwt(jwt_key, &l.user_id, now_unix))
                .collect(),
            forged_jwts: logins
                .iter()
                .map(|l| login_jwt(&forged_key, &l.user_id, now_unix))
                .collect(),
        }
    }

    /// How many logins there are.
    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    /// The credential of login `index` (wrapping), valid or forged.
    pub fn get(&self, mode: AuthMode, index: usize, forged: bool) -> Credential<'_> {
        if self.is_empty() {
            return Credential::None;
        }
        let i = index % self.len();
        match (mode, forged) {
            (AuthMode::None, _) => Credential::None,
            (AuthMode::Cookie, false) => Credential::Cookie(&self.cookies[i]),
            (AuthMode::Cookie, true) => Credential::Cookie(&self.forged_cookies[i]),
            (AuthMode::Jwt, false) => Credential::Jwt(&self.jwts[i]),
            (AuthMode::Jwt, true) => Credential::Jwt(&self.forged_jwts[i]),
        }
    }
}

/// A running server, ready to be measured.
pub struct Target {
    /// Report name, e.g. `sockhive (sc)`.
    pub name: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Public addresses; connections are spread over them round-robin.
    pub addrs: Vec<SocketAddr>,
    /// How its sockets authenticate.
    pub auth: AuthMode,
    /// Processes whose CPU and memory are the server's.
    pub roots: Vec<u32>,
    /// The application's hook server behind sockhive (also in `roots`), reported apart.
    pub hook_roots: Vec<u32>,
    /// Admin endpoint for `POST /api/sockets/query`, if the server has one.
    pub admin: Option<SocketAddr>,
    /// Bearer token for the admin endpoint.
    pub admin_token: String,
    /// The local address connections come from (the kernel's choice when `None`).
    pub source: Option<IpAddr>,
    /// Spreads connections over `addrs`.
    cursor: AtomicUsize,
}

impl Target {
    /// A target with its connection cursor at the start.
    pub fn new(
        name: String,
        protocol: Protocol,
        addrs: Vec<SocketAddr>,
        auth: AuthMode,
        roots: Vec<u32>,
    ) -> Target {
        Target {
            name,
            protocol,
            addrs,
            auth,
            roots,
            hook_roots: Vec::new(),
            admin: None,
            admin_token: String::new(),
            source: None,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next address in round-robin order.
    pub fn next_addr(&self) -> SocketAddr {
        let i = self.cursor.fetch_add(1, Ordering::Relaxed);
        self.addrs[i % self.addrs.len()]
    }

    /// When a handshake counts as done for this target.
    pub fn completion(&self) -> Completion {
        match self.auth {
            AuthMode::None => Completion::Reply,
            _ => Completion::Authenticated,
        }
    }

    /// Opens a connection and completes its handshake; the connection is
    /// returned only when it was accepted.
    pub async fn connect(
        &self,
        credential: Credential<'_>,
        timeout: Duration,
    ) -> Result<(Outcome, Option<Connection>), ClientError> {
        let addr = self.next_addr();
        let attempt = async {
            let opened = Connection::open(self.source, addr, self.protocol, credential);
            let mut connection = match opened.await? {
                Ok(c) => c,
                Err(refusal) => return Ok((Outcome::Refused(refusal), None)),
            };
            let outcome = connection.handshake(credential, self.completion()).await?;
            let keep = (outcome == Outcome::Accepted).then_some(connection);
            Ok((outcome, keep))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

impl Target {
    /// A Socket.IO session over HTTP long-polling, authenticated up to the
    /// CONNECT reply. Its address is chosen round-robin once and kept for
    /// every request of the session: the sticky setup socket.io needs (and
    /// sockhive, with one port, does not).
    pub async fn connect_polling(
        &self,
        credential: Credential<'_>,
        timeout: Duration,
    ) -> Result<(Outcome, Option<PollingSocket>), ClientError> {
        let addr = self.next_addr();
        tokio::time::timeout(timeout, PollingSocket::connect(addr, credential))
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_hands_out_valid_and_forged() {
        let logins: Vec<Login> = (0..3).map(|i| Login::derive("s", i)).collect();
        let book = CredentialBook::new(&logins, "secret", "key", 1_700_000_000);
        assert_eq!(book.len(), 3);
        let (Credential::Cookie(good), Credential::Cookie(bad)) = (
            book.get(AuthMode::Cookie, 4, false),
            book.get(AuthMode::Cookie, 4, true),
        ) else {
            panic!("cookie mode must give cookies");
        };
        assert_ne!(good, bad);
        assert_eq!(good, logins[1].cookie_header("secret"));
        assert!(matches!(
            book.get(AuthMode::Jwt, 0, false),
            Credential::Jwt(_)
        ));
        assert!(matches!(
            book.get(AuthMode::None, 0, false),
            Credential::None
        ));
    }
}
