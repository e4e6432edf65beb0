//! `perpetual run`: the perpetual loop.

use super::Exit;
use crate::root::Root;
use crate::run::runloop::{Loop, RunOptions};
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Start at most N sessions (agent commands and backfills), wait for them, exit.
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<u64>,
    /// One round (assign, built-in tasks, a session per free slot), wait for what it
    /// started, exit; status 4 when there was nothing to start.
    #[arg(long)]
    pub once: bool,
    /// Write the log into DIR (relative paths: from the root) instead of stderr: one
    /// file a day, `run.YYYY-MM-DD.log`, the newest --log-files kept. Under systemd,
    /// leave it out: journald keeps and rotates stderr.
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<std::path::PathBuf>,
    /// Daily log files kept in --log-dir.
    #[arg(long, value_name = "N", default_value_t = 7, requires = "log_dir")]
    pub log_files: usize,
    /// Also serve the web faucet from this process, on ADDR (e.g. 127.0.0.1:8700; see
    /// `perpetual serve`; the token comes from PERPETUAL_TOKEN or serve.token).
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<std::net::SocketAddr>,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    if let Some(a) = &args.agent {
        crate::root::check_agent_name(a)?;
    }
    // The loop writes prompts into agents' pipes: an agent that exits without reading
    // its prompt must be an EPIPE for one write, not a SIGPIPE that kills the loop (the
    // binary restores the default for the one-shot commands, for `| head`).
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let _lock = root.lock_writer("run")?;
    let (config, mut conn) = super::open(root)?;
    // The faucet lives as long as the loop; it only reads.
    let _faucet = match args.serve {
        Some(addr) => {
            let token = std::env::var("PERPETUAL_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            let opts = super::serve::options(&config, Some(addr), token);
            let server = crate::serve::Server::start(root, &config, &opts)?;
            super::serve::announce(&server);
            Some(server)
        }
        None => None,
    };
    let once = args.once;
    let looper = Loop::new(
        &mut conn,
        root,
        &config,
        RunOptions {
            agent: args.agent,
            max_sessions: args.max_sessions,
            once,
        },
    );
    let stopper = looper.stopper();
    crate::engine::watch::on_signals(move || stopper.stop())?;
    let report = looper.run()?;
    tracing::info!(
        "run: {} session(s) started, {} adopted, {} built-in task run(s){}",
        report.sessions_started,
        report.adopted,
        report.builtin_runs,
        if report.paused.is_empty() {
            String::new()
        } else {
            format!(
                "; paused: {}",
                report.paused.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    );
    Ok(
        if once && report.sessions_started == 0 && report.builtin_runs == 0 && report.adopted == 0 {
            Exit::Nothing
        } else {
            Exit::Ok
        },
    )
}
