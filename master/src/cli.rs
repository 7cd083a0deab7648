//! The `sockhive` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sockhive_shared::config::{ConfigLayer, LogFormat};
use sockhive_shared::units::HumanDuration;

/// sockhive: authenticated realtime sockets (SocketCluster and Socket.IO) at cluster scale.
#[derive(Debug, Parser)]
#[command(name = "sockhive", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: the master forks the workers and serves until SIGTERM/SIGINT.
    Serve(SettingsArgs),
    /// Run exactly `serve`'s checks without serving; print the effective settings as a TOML file `--config` accepts (secrets left out), exit 2 on error.
    CheckConfig(SettingsArgs),
    /// JWT helpers.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Cluster-wide socket queries and publishing through a node's admin API.
    #[command(subcommand)]
    Sockets(SocketsCommand),
    /// Internal: a worker process, started by `serve` with inherited sockets.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Settings: a TOML file plus flags and `SOCKHIVE_*` variables over it.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// TOML configuration file.
    #[arg(long, env = "SOCKHIVE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub settings: ConfigLayer,
}

/// Arguments the master passes to a worker.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker's slot, 1-based.
    #[arg(long)]
    pub slot: u16,
    /// Log format inherited from the master.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// `sockhive token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a JWT the server accepts (HS256 with --auth-key).
    Sign {
        /// The HS256 key, as the server's --auth-key.
        #[arg(long, env = "SOCKHIVE_AUTH_KEY")]
        auth_key: String,
        /// The claims, a JSON object (e.g. '{"sub":"alice","channels":["room:*"]}').
        #[arg(long)]
        claims: String,
        /// Lifetime of the token.
        #[arg(long, default_value = "1d")]
        expires_in: HumanDuration,
    },
}

/// Where the admin API is.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The node's admin URL, e.g. http://127.0.0.1:9000.
    #[arg(
        long,
        env = "SOCKHIVE_ADMIN_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    pub admin: String,
    /// The node's admin token.
    #[arg(long, env = "SOCKHIVE_ADMIN_TOKEN")]
    pub admin_token: String,
}

/// `sockhive sockets ...`
#[derive(Debug, Subcommand)]
pub enum SocketsCommand {
    /// Print the records of the sockets matching a filter, on every worker.
    List {
        #[command(flatten)]
        #[allow(missing_docs)]
        admin: AdminArgs,
        /// A filter (JSON object); every socket when absent.
        #[arg(long, default_value = "{}")]
        filter: String,
        /// Most records to return.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Send an event to every matching socket.
    Emit {
        #[command(flatten)]
        #[allow(missing_docs)]
        admin: AdminArgs,
        /// A filter (JSON object).
        #[arg(long)]
        filter: String,
        /// The event name.
        #[arg(long)]
        event: String,
        /// The event data (JSON).
        #[arg(long, default_value = "null")]
        data: String,
    },
    /// Disconnect every matching socket.
    Kick {
        #[command(flatten)]
        #[allow(missing_docs)]
        admin: AdminArgs,
        /// A filter (JSON object).
        #[arg(long)]
        filter: String,
        /// The close reason the client sees.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Publish a message to a channel on every node (POST /api/publish).
    Publish {
        #[command(flatten)]
        #[allow(missing_docs)]
        admin: AdminArgs,
        /// The channel name.
        #[arg(long)]
        channel: String,
        /// The message (JSON), as subscribers receive it.
        #[arg(long)]
        data: String,
    },
}
