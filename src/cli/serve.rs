//! `perpetual serve`: the web faucet.

use super::Exit;
use crate::root::Root;
use crate::serve::{Options, Server};
use anyhow::Result;
use std::net::SocketAddr;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to listen (port 0: a free port, printed on stderr). Default: serve.addr in
    /// perpetual.toml, 127.0.0.1:8700. Any address but loopback needs a token.
    #[arg(long, value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
    /// The token every request must carry (`Authorization: Bearer <token>`); default:
    /// serve.token in perpetual.toml. Prefer PERPETUAL_TOKEN or the file to this flag,
    /// which other users can see in the process list.
    #[arg(
        long,
        env = "PERPETUAL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

/// The server's options: the flags, else the configuration.
pub fn options(
    config: &crate::config::Config,
    addr: Option<SocketAddr>,
    token: Option<String>,
) -> Options {
    Options {
        addr: addr.unwrap_or(config.serve.addr),
        token: token.or_else(|| config.serve.token.clone()),
    }
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let config = root.config()?;
    let mut server = Server::start(root, &config, &options(&config, args.addr, args.token))?;
    announce(&server);
    let stopper = server.stopper();
    crate::engine::watch::on_signals(move || stopper.stop())?;
    server.wait()?;
    tracing::info!("serve: stopped");
    Ok(Exit::Ok)
}

/// The line that says where the faucet is (tests read the port from it).
pub fn announce(server: &Server) {
    tracing::info!(
        "serving the faucet on http://{}/ (read-only; Ctrl-C stops)",
        server.addr()
    );
}
