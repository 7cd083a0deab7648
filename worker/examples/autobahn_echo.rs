//! The Autobahn|Testsuite's target: sockhive's own WebSocket path (front
//! door, production limits, socket core, close handling) with an echo for an
//! application. Test-only: `tests/autobahn/run.sh` builds and runs it.
//!
//! `autobahn_echo [PORT]` listens on 127.0.0.1 (port 0: any free one) and
//! prints `listening on 127.0.0.1:PORT` once it accepts.

use std::io::Write;
use std::time::Duration;

use sockhive_shared::config::{Config, ConfigLayer};
use sockhive_shared::units::HumanDuration;
use sockhive_worker::front_door::echo;

fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 0,
    };
    let mut layer = ConfigLayer::default();
    layer.server.node_id = Some("autobahn".into());
    // The one departure from the defaults: the echo has no protocol
    // handshake, so the handshake deadline (SocketCluster's 10 s) would end
    // the slower cases. Every WebSocket limit (payload, frame, buffers, send
    // queue) is the production default.
    layer.limits.handshake_timeout = Some(HumanDuration(Duration::from_secs(3600)));
    let config = Config::resolve(layer)?;
    // A worker is single-threaded in production; so is this one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ctx = echo::standalone_worker(config)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, peer) = listener.accept().await?;
            tokio::spawn(echo::serve(ctx.clone(), stream, peer));
        }
    })
}
