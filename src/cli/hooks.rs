//! `perpetual hooks install` and `perpetual hooks handle` (what the installed hooks run).

use super::Exit;
use super::output::print_json;
use crate::root::Root;
use crate::run::hooks::{self, HookInput};
use anyhow::{Context, Result};
use clap::Subcommand;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: HooksCommand,
}

/// The hooks subcommands.
#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// Add perpetual's hooks to the project's .claude/settings.json (merging with what is
    /// there): the session brief at SessionStart, the budget checked after each tool use
    /// and at Stop (a Stop is blocked at the wrap threshold until the session is
    /// wrapped), a checkpoint and a handoff before a compaction.
    Install {
        /// The project Claude Code runs in (default: the root).
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
        /// The perpetual program the hooks run (default: this program, by its absolute
        /// path, so the hooks work whatever Claude Code's PATH is).
        #[arg(long, value_name = "PATH")]
        bin: Option<String>,
        /// Print what was done as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Answer one Claude Code hook: the hook input as JSON on stdin, the answer (if any)
    /// as JSON on stdout. Installed by `hooks install`; not meant to be typed.
    Handle,
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    match args.command {
        HooksCommand::Install { project, bin, json } => {
            let project = project.unwrap_or_else(|| root.dir().to_path_buf());
            std::fs::create_dir_all(&project)
                .with_context(|| format!("cannot create {}", project.display()))?;
            let bin = match bin {
                Some(b) => b,
                None => std::env::current_exe()
                    .and_then(|e| e.canonicalize())
                    .context("cannot tell where this program is; pass --bin PATH")?
                    .display()
                    .to_string(),
            };
            let command = hooks::command_for(&bin, &project, root);
            let report = hooks::install(&project.join(".claude").join("settings.json"), &command)?;
            if json {
                print_json(&report)?;
            } else {
                println!("hooks in {}: {}", report.settings.display(), report.command);
                if !report.added.is_empty() {
                    println!("  added to {}", report.added.join(", "));
                }
                if !report.kept.is_empty() {
                    println!("  already there: {}", report.kept.join(", "));
                }
            }
            Ok(Exit::Ok)
        }
        HooksCommand::Handle => handle(Some(root.dir())),
    }
}

/// `hooks handle`: the root is `given` (`--root` or `PERPETUAL_ROOT`) when it is a
/// root, else the nearest root above the working directory; with none, the hook answers
/// nothing and creates nothing (Claude Code carries on as without perpetual).
pub fn handle(given: Option<&Path>) -> Result<Exit> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the hook input on stdin")?;
    let input: HookInput =
        serde_json::from_str(&text).context("the hook input is not the JSON Claude Code sends")?;
    let root = match given {
        Some(dir) if Root::is_root(dir) => Root::at(dir)?,
        Some(_) => return Ok(Exit::Ok),
        None => match Root::find(&std::env::current_dir()?) {
            Some(r) => r,
            None => return Ok(Exit::Ok),
        },
    };
    let (config, mut conn) = super::open(&root)?;
    if let Some(answer) = hooks::answer(&mut conn, &root, &config, &input)? {
        print_json(&answer)?;
    }
    Ok(Exit::Ok)
}
