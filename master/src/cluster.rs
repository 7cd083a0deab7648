//! Cluster-wide commands: filterSocketsByUser and friends over every worker
//! of every node.
//!
//! A command runs on this node's workers and, with a Redis broker, on every
//! other live node through the bus. When the filter pins user ids, only the
//! nodes and workers that the user index names are asked, so "every socket
//! of user X" does not wake the whole cluster.

use std::collections::HashSet;
use std::sync::Arc;

use sockhive_broker::cluster::IncomingRequest;
use sockhive_shared::filter::Filter;
use sockhive_shared::ipc::{ClusterCommand, ClusterReply, NodeReply, ToMaster, ToWorker};
use tokio::sync::mpsc;

use crate::supervisor::Master;

/// The answer of the whole cluster to one command.
#[derive(Debug)]
pub struct ClusterOutcome {
    /// Every node's replies merged.
    pub reply: ClusterReply,
    /// Live nodes that answered (or that the index showed have nothing to answer).
    pub nodes_answered: usize,
    /// Live nodes.
    pub nodes_expected: usize,
    /// Workers that answered, on every node.
    pub workers_answered: usize,
    /// Workers asked, on every node.
    pub workers_expected: usize,
    /// Set when Redis could not be used: only this node was covered.
    pub broker_error: Option<String>,
}

/// The user ids a command's filter pins, if any.
fn pinned_users(command: &ClusterCommand) -> Option<Vec<String>> {
    let filter = match command {
        ClusterCommand::Query { filter, .. }
        | ClusterCommand::Emit { filter, .. }
        | ClusterCommand::Kick { filter, .. } => filter,
        ClusterCommand::PatchSession { .. } | ClusterCommand::Poll { .. } => return None,
    };
    Filter::parse(filter).ok()?.user_ids()
}

impl Master {
    /// Runs `command` on this node's workers (only those holding the pinned users, if any).
    pub async fn run_local(&self, command: &ClusterCommand) -> NodeReply {
        if let ClusterCommand::Poll { slot, call } = command {
            let answer = self.poll_local(*slot, call.clone()).await;
            return NodeReply {
                node: self.config.server.node_id.clone(),
                workers_answered: usize::from(answer.is_some()),
                workers_expected: 1,
                reply: ClusterReply::Poll { answer },
            };
        }
        let users = pinned_users(command);
        let only: Option<HashSet<_>> = users.as_deref().map(|users| self.workers_for_users(users));
        self.metrics
            .cluster_queries
            .with_label_values(&[if only.is_some() { "indexed" } else { "all" }])
            .inc();
        let empty = ClusterReply::empty_for(command);
        if only.as_ref().is_some_and(HashSet::is_empty) {
            return NodeReply {
                node: self.config.server.node_id.clone(),
                reply: empty,
                workers_answered: 0,
                workers_expected: 0,
            };
        }
        let timeout = self.config.broker.query_timeout;
        let (replies, asked) = self
            .gather_from(
                only.as_ref(),
                |request| ToWorker::Cluster {
                    request,
                    command: command.clone(),
                },
                timeout,
            )
            .await;
        self.metrics.query_workers.inc_by(asked as u64);
        let answered = replies.len();
        let reply = replies
            .into_iter()
            .filter_map(|(_, message)| match message {
                ToMaster::Cluster { reply, .. } => Some(reply),
                _ => None,
            })
            .fold(empty, ClusterReply::merge);
        NodeReply {
            node: self.config.server.node_id.clone(),
            reply,
            workers_answered: answered,
            workers_expected: asked,
        }
    }

    /// Runs `command` on every worker of every live node that may hold a match.
    pub async fn cluster_command(&self, command: ClusterCommand) -> ClusterOutcome {
        let Some(link) = self.cluster.clone() else {
            let local = self.run_local(&command).await;
            return ClusterOutcome {
                nodes_answered: usize::from(local.workers_answered == local.workers_expected),
                nodes_expected: 1,
                workers_answered: local.workers_answered,
                workers_expected: local.workers_expected,
                reply: local.reply,
                broker_error: None,
            };
        };
        let me = self.config.server.node_id.clone();
        let remote = async {
            let live = link.live_nodes().await?;
            let others: Vec<String> = live.iter().filter(|n| **n != me).cloned().collect();
            let targets = match pinned_users(&command) {
                Some(users) => {
                    let holding = link.nodes_for_users(&users).await?;
                    others
                        .iter()
                        .filter(|n| holding.contains(*n))
                        .cloned()
                        .collect()
                }
                None => others.clone(),
            };
            let replies = link
                .request(
                    command.clone(),
                    targets.clone(),
                    self.config.broker.query_timeout,
                )
                .await;
            Ok::<_, sockhive_broker::BrokerError>((others.len(), targets.len(), replies))
        };
        let (local, remote) = tokio::join!(self.run_local(&command), remote);
        let mut outcome = ClusterOutcome {
            nodes_answered: usize::from(local.workers_answered == local.workers_expected),
            nodes_expected: 1,
            workers_answered: local.workers_answered,
            workers_expected: local.workers_expected,
            reply: local.reply,
            broker_error: None,
        };
        match remote {
            Ok((others, targeted, replies)) => {
                outcome.nodes_expected += others;
                // Untargeted live nodes hold no socket of the pinned users: they count as answered.
                outcome.nodes_answered += others - targeted + replies.len();
                for reply in replies {
                    outcome.workers_answered += reply.workers_answered;
                    outcome.workers_expected += reply.workers_expected;
                    outcome.reply = outcome.reply.merge(reply.reply);
                }
            }
            Err(e) => outcome.broker_error = Some(e.to_string()),
        }
        outcome
    }

    /// Publishes a channel message on this node and, with Redis, on every other one.
    pub async fn publish_everywhere(
        &self,
        channel: &str,
        data: Box<serde_json::value::RawValue>,
    ) -> Result<(), sockhive_broker::BrokerError> {
        let text = data.get().to_string();
        self.publish(channel, data);
        match &self.cluster {
            Some(link) => link.publish_channel(channel, &text).await,
            None => Ok(()),
        }
    }
}

/// Answers the other nodes' requests until the bus closes.
pub async fn serve_bus(
    master: Arc<Master>,
    mut requests: mpsc::UnboundedReceiver<IncomingRequest>,
) {
    while let Some(IncomingRequest {
        from,
        request,
        command,
    }) = requests.recv().await
    {
        let master = master.clone();
        tokio::spawn(async move {
            let reply = master.run_local(&command).await;
            if let Some(link) = &master.cluster {
                link.reply(&from, request, reply).await;
            }
        });
    }
}
