//! `perpetual watch`.

use super::Exit;
use crate::engine::watch::{self, Watch, WatchOptions};
use crate::root::Root;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Poll the inbox instead of using filesystem events (NFS, some network and FUSE
    /// filesystems); the interval is watch.poll_interval_ms.
    #[arg(long)]
    pub poll: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let _lock = root.lock_writer("watch")?;
    let (config, conn) = super::open(root)?;
    let watcher = Watch::new(
        root,
        &config,
        &conn,
        WatchOptions::from_config(&config, args.poll),
    )?;
    watch::stop_on_signals(watcher.stopper())?;
    // One log line per file comes from the writer; the totals are logged on the way out.
    watcher.run(&mut |_| {})?;
    Ok(Exit::Ok)
}
