//! `sockhive`: the entry point of every process of a node.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use sockhive_master::admin_client;
use sockhive_master::cli::{Cli, Command, SettingsArgs, SocketsCommand, TokenCommand};
use sockhive_master::listeners::PublicListeners;
use sockhive_master::supervisor::Master;
use sockhive_shared::config::{redact_url_password, Config, ConfigLayer, LogFormat};
use sockhive_shared::jwt::{JwtKeys, TokenSigner};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match load_config(args) {
            Ok(config) => report(serve(config)),
            Err(e) => usage_error(e),
        },
        Command::CheckConfig(args) => match load_config(args) {
            Ok(config) => {
                print!("{}", config.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
        Command::Worker(args) => {
            init_tracing(args.log_format, &format!("worker-{}", args.slot));
            report(sockhive_worker::run())
        }
        Command::Token(TokenCommand::Sign {
            auth_key,
            claims,
            expires_in,
        }) => sign_token(&auth_key, &claims, expires_in.0),
        Command::Sockets(command) => sockets(command),
    }
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sockhive: {e}");
    ExitCode::from(2)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sockhive: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Flags and environment over the TOML file over the defaults, and every
/// check `serve` makes before it binds: `check-config` calls exactly this, so
/// it accepts what `serve` accepts and refuses the rest with the same words.
fn load_config(args: SettingsArgs) -> anyhow::Result<Config> {
    let file = match &args.config {
        Some(path) => ConfigLayer::from_file(path)?,
        None => ConfigLayer::default(),
    };
    let config = Config::resolve(args.settings.over(file))?;
    // The one check the shared config cannot make: the URLs as the broker
    // and the session store parse them (otherwise workers crash-loop on it).
    for (key, url) in [
        ("broker.redis_url (--redis-url)", &config.broker.redis_url),
        (
            "session.session_redis_url (--session-redis-url)",
            &config.session.session_redis_url,
        ),
    ] {
        if let Some(url) = url {
            sockhive_broker::redis::redis_config(url).map_err(|e| {
                anyhow::anyhow!(
                    "{key}: {}",
                    e.to_string().replace(url, &redact_url_password(url))
                )
            })?;
        }
    }
    Ok(config)
}

fn init_tracing(format: LogFormat, role: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: a log file or a
    // collector would keep them as `\x1b[...m` noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    tracing::debug!(role, "logging initialised");
}

/// Binds everything, then runs the master on a single-threaded runtime on
/// this (main) thread: workers are forked from it, see `spawn`.
fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing(config.server.log_format, "master");
    // Before any thread or worker exists: they inherit it.
    if let Err(e) = sockhive_master::cpu_scheduling::apply(config.server.cpu_scheduling) {
        tracing::warn!(error = %e, policy = ?config.server.cpu_scheduling, "cannot set the CPU scheduling policy; running with the inherited one");
    }
    if config.auth.auth_key_is_random {
        tracing::warn!("no --auth-key configured: using a random key; tokens die with this master and other nodes will not accept them");
    }
    let listeners = PublicListeners::bind(
        config.server.listen,
        config.server.accept_mode,
        config.server.workers,
    )?;
    let admin = std::net::TcpListener::bind(config.server.admin_listen).with_context(|| {
        format!(
            "cannot listen on admin address {}",
            config.server.admin_listen
        )
    })?;
    admin.set_nonblocking(true)?;
    banner(&config, admin.local_addr()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_master(config, listeners, admin))
}

async fn run_master(
    config: Config,
    listeners: PublicListeners,
    admin: std::net::TcpListener,
) -> anyhow::Result<()> {
    let public = listeners.local_addr();
    let admin_addr = admin.local_addr()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (requests_tx, requests) = tokio::sync::mpsc::unbounded_channel();
    let cluster = match &config.broker.redis_url {
        Some(url) => Some(
            sockhive_broker::cluster::ClusterLink::start(url, &config.server.node_id, requests_tx)
                .await
                .context("redis broker")?,
        ),
        None => None,
    };
    let master = Master::new(config, listeners, cluster);
    tokio::spawn(sockhive_master::cluster::serve_bus(
        master.clone(),
        requests,
    ));
    tokio::spawn(sockhive_master::admin::serve(
        master.clone(),
        tokio::net::TcpListener::from_std(admin)?,
    ));
    let started = tokio::select! {
        result = master.start() => result,
        _ = term.recv() => Err(anyhow::anyhow!("terminated during start-up")),
        _ = int.recv() => Err(anyhow::anyhow!("interrupted during start-up")),
    };
    if let Err(e) = started {
        master.drain().await;
        return Err(e);
    }
    master.advertise(public).await;
    announce(&master, public, admin_addr);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break }
            _ = hup.recv() => {
                let master = master.clone();
                tokio::spawn(async move { master.rolling_restart().await });
            }
        }
    }
    master.drain().await;
    Ok(())
}

/// The start-up lines that say what this node will do with a connection and
/// where it can be managed, so an operator reads it off the log instead of
/// reconstructing it from flags, environment and file.
fn banner(config: &Config, admin: std::net::SocketAddr) {
    for line in banner_lines(config, admin) {
        tracing::info!("{line}");
    }
}

fn banner_lines(config: &Config, admin: std::net::SocketAddr) -> Vec<String> {
    let auth = &config.auth;
    let key = match (auth.auth_algorithm, auth.auth_key_is_random) {
        (sockhive_shared::jwt::JwtAlgorithm::Hs256, true) => "random key per start".to_string(),
        (sockhive_shared::jwt::JwtAlgorithm::Hs256, false) => "--auth-key".to_string(),
        (_, _) if auth.auth_private_key_pem.is_some() => "signing and verifying".to_string(),
        (_, _) => "verifying only".to_string(),
    };
    let mut methods = vec![format!("JWT ({} {key})", auth.auth_algorithm)];
    let session = &config.session;
    if session.enabled() {
        let store = session
            .session_redis_url
            .as_deref()
            .map(redact_url_password)
            .unwrap_or_default();
        methods.push(format!(
            "session cookie `{}` (store {store}, prefix {}, user lookup {})",
            session.session_cookie, session.session_prefix, session.user_lookup
        ));
        if session.accept_query_session_id {
            methods.push("session_id query parameter (signed values)".into());
        }
    }
    let mode = match (auth.require_auth, auth.reject_at_upgrade) {
        (false, _) => "optional",
        (true, false) => "required (refused after the upgrade)",
        (true, true) => "required (refused with 401 at the upgrade)",
    };
    let broker = match &config.broker.redis_url {
        Some(url) => format!("redis {}", redact_url_password(url)),
        None => "embedded (this node alone)".to_string(),
    };
    let api = if config.server.admin_token.is_some() {
        format!("on at http://{admin}/api/ (bearer token set)")
    } else {
        "off (no --admin-token: /api/* refused)".to_string()
    };
    vec![
        format!("auth: {}; login {mode}", methods.join(", ")),
        format!("broker: {broker}"),
        hooks_line(&config.hooks),
        format!("admin API: {api}"),
        format!("metrics: http://{admin}/metrics"),
    ]
}

/// The banner's `hooks:` line: where the app is called, and for what.
fn hooks_line(hooks: &sockhive_shared::config::HooksConfig) -> String {
    match &hooks.hook_url {
        None => "hooks: off".to_string(),
        Some(url) => {
            let names: Vec<&str> = hooks.hooks.iter().map(|h| h.as_str()).collect();
            format!(
                "hooks: {} at {url}/{{hook}} (timeout {:?}, {} in flight per worker)",
                names.join(", "),
                hooks.hook_timeout,
                hooks.hook_concurrency
            )
        }
    }
}

/// Tells the person (or test) who started the node where to connect.
fn announce(master: &Arc<Master>, public: std::net::SocketAddr, admin: std::net::SocketAddr) {
    let host = if public.ip().is_unspecified() {
        format!("127.0.0.1:{}", public.port())
    } else {
        public.to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "sockhive is serving with {} workers (node {})",
        master.config.server.workers, master.config.server.node_id
    );
    let _ = writeln!(out, "  SocketCluster: ws://{host}/socketcluster/");
    let _ = writeln!(
        out,
        "  Socket.IO:     ws://{host}/socket.io/?EIO=4&transport=websocket"
    );
    let _ = writeln!(out, "  health:        http://{host}/healthz");
    let _ = writeln!(
        out,
        "  admin:         http://{admin}/metrics  http://{admin}/readyz"
    );
    let _ = out.flush();
    tracing::info!(%public, %admin, workers = master.config.server.workers, "ready");
}

fn sign_token(auth_key: &str, claims: &str, expires_in: std::time::Duration) -> ExitCode {
    let claims = match serde_json::from_str::<serde_json::Value>(claims) {
        Ok(serde_json::Value::Object(claims)) => claims,
        Ok(_) => return usage_error("--claims must be a JSON object"),
        Err(e) => return usage_error(format!("--claims is not JSON: {e}")),
    };
    let signed = JwtKeys::hs256(auth_key)
        .map_err(|e| e.to_string())
        .and_then(|keys| TokenSigner::new(&keys).map_err(|e| e.to_string()))
        .and_then(|signer| {
            signer
                .sign(claims, expires_in, sockhive_worker::auth::now_unix())
                .map_err(|e| e.to_string())
        });
    match signed {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sockhive: cannot sign: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sockets(command: SocketsCommand) -> ExitCode {
    let parse = |what: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| format!("--{what} is not JSON: {e}"))
    };
    let call = match command {
        SocketsCommand::List {
            admin,
            filter,
            limit,
        } => parse("filter", &filter).map(|filter| {
            let mut body = json!({ "filter": filter });
            if let Some(limit) = limit {
                body["limit"] = json!(limit);
            }
            (admin, "/api/sockets/query", body)
        }),
        SocketsCommand::Emit {
            admin,
            filter,
            event,
            data,
        } => parse("filter", &filter).and_then(|filter| {
            parse("data", &data).map(|data| {
                (
                    admin,
                    "/api/sockets/emit",
                    json!({"filter": filter, "event": event, "data": data}),
                )
            })
        }),
        SocketsCommand::Kick {
            admin,
            filter,
            reason,
        } => parse("filter", &filter).map(|filter| {
            let mut body = json!({ "filter": filter });
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            (admin, "/api/sockets/kick", body)
        }),
        SocketsCommand::Publish {
            admin,
            channel,
            data,
        } => parse("data", &data).map(|data| {
            (
                admin,
                "/api/publish",
                json!({"channel": channel, "data": data}),
            )
        }),
    };
    let (admin, path, body) = match call {
        Ok(call) => call,
        Err(e) => return usage_error(e),
    };
    match admin_client::post(&admin.admin, &admin.admin_token, path, &body) {
        Ok(reply) => {
            println!("{}", reply.trim());
            ExitCode::SUCCESS
        }
        Err(e) if e.is_bad_usage() => usage_error(e),
        Err(e) => {
            eprintln!("sockhive: {e}");
            ExitCode::FAILURE
        }
    }
}
