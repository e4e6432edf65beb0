//! `perpetual assign`: the task assigner, once.

use super::Exit;
use super::output::print_json;
use crate::root::Root;
use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what was done as a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, mut conn) = super::open(root)?;
    let done = crate::work::assign::assign(&mut conn, root, &config)?;
    if args.json {
        print_json(&done)?;
    } else if done.is_empty() {
        println!(
            "nothing to assign: no drops waiting without a task, no failed task to retry, every templated queue has {} ready",
            config.assign.min_ready
        );
    } else {
        for e in &done {
            println!("{:<12} {}", e.action, e.detail);
        }
    }
    Ok(Exit::Ok)
}
