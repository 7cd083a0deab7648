//! The effects of an app hook's answer, applied to the socket in order
//! before the reply reaches the client (interface.md "App hooks"): an
//! identity change moves the record, the user index and the channel rights
//! at once, as any login does.

use serde_json::Value;
use sockhive_shared::ipc::{ClusterCommand, ToMaster};

use super::protocol::Protocol;
use super::{CloseReason, Socket};
use crate::app::{Effect, EmitTarget};
use crate::auth::{Identity, Method};
use crate::transport::Wire;

/// What `#removeAuthToken`'s Socket.IO counterpart says when the app ends a login.
const APP_LOGOUT: &str = "the application ended the login";

impl<P: Protocol, W: Wire> Socket<P, W> {
    /// Applies `effects` in order; the ending a `disconnect` asks for.
    pub(super) async fn apply_effects(&mut self, effects: Vec<Effect>) -> Option<CloseReason> {
        let mut ending = None;
        for effect in effects {
            match effect {
                Effect::SetAuthToken { claims, expires_in } => self.app_login(claims, expires_in),
                Effect::Deauthenticate => {
                    if self.login.is_authenticated() {
                        self.login.clear(&self.worker);
                        self.protocol
                            .deauthenticated(&mut self.out, "AuthTokenError", APP_LOGOUT);
                        self.identity_changed();
                    }
                }
                Effect::Join(channel) => {
                    let joined = self
                        .membership
                        .join(&self.worker, &self.id, &self.outbox, P::DELIVERY, channel)
                        .await;
                    if let Err(refusal) = joined {
                        tracing::debug!(socket = %self.id, ?refusal, "a hook's join effect failed");
                    }
                }
                Effect::Leave(channel) => {
                    let _ = self
                        .membership
                        .unsubscribe(&self.worker, &self.id, &channel);
                }
                Effect::SetSession(changes) => {
                    self.worker.sockets.patch_session(&self.id, changes);
                }
                Effect::Emit { to, event, data } => match to {
                    EmitTarget::SelfSocket => self.protocol.event(&mut self.out, &event, &data),
                    // Cluster-wide, through the master, exactly as the admin
                    // API's emit (this worker included).
                    EmitTarget::Matching(filter) => {
                        self.worker.master.send(&ToMaster::Command {
                            command: ClusterCommand::Emit {
                                filter,
                                event,
                                data,
                            },
                        });
                    }
                },
                Effect::Disconnect { code, reason } => {
                    ending.get_or_insert(CloseReason::App { code, reason });
                }
            }
        }
        ending
    }

    /// `set_auth_token`: signs the app's claims and logs the socket in with them.
    fn app_login(
        &mut self,
        mut claims: serde_json::Map<String, Value>,
        expires_in: Option<std::time::Duration>,
    ) {
        let auth = &self.worker.config.auth;
        let lifetime = expires_in
            .unwrap_or(auth.token_expiry)
            .min(auth.max_token_lifetime);
        claims.remove("exp");
        claims.remove("iat");
        let jwt = &self.worker.credentials.jwt;
        let signed = jwt
            .sign_for(claims, lifetime)
            .map_err(|e| e.to_string())
            .and_then(|token| {
                jwt.verify(&token)
                    .map(|claims| (token, claims))
                    .map_err(|e| e.to_string())
            });
        let (token, claims) = match signed {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(socket = %self.id, %error, "cannot sign the token a hook asked for");
                return;
            }
        };
        let minted = self.login.set(
            &self.worker,
            Identity {
                method: Method::Token,
                claims,
                session: None,
                minted_token: Some(token),
            },
        );
        if let Some(token) = minted {
            self.protocol
                .token_issued(&mut self.out, &token, self.login.claims());
        }
        self.identity_changed();
    }
}
