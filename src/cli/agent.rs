//! `perpetual agent pause|resume`: the circuit breaker's switch.

use super::Exit;
use crate::root::Root;
use crate::store::agents as store_agents;
use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// The agent subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Let a paused agent run again: `perpetual run` starts its sessions, the circuit
    /// breaker counts afresh, and the review flag it set on the task is cleared.
    Resume {
        /// The agent.
        agent: String,
    },
    /// Pause an agent: `perpetual run` starts no session of it (its inbox is still
    /// integrated) until `agent resume`.
    Pause {
        /// The agent.
        agent: String,
        /// Why (shown by `status`).
        #[arg(long, default_value = "paused by hand")]
        reason: String,
    },
}

pub fn run(root: &Root, args: Args) -> Result<Exit> {
    let (config, conn) = super::open(root)?;
    let known = crate::work::tasks::all_agents(&conn, root, &config)?;
    let check = |agent: &str| -> Result<()> {
        crate::root::check_agent_name(agent)?;
        anyhow::ensure!(
            known.iter().any(|a| a == agent),
            "no agent {agent:?} in {} (known: {}); agents are configured in perpetual.toml, \
             have an inbox/ folder or a task",
            root.dir().display(),
            known.join(", ")
        );
        Ok(())
    };
    match args.command {
        AgentCommand::Resume { agent } => {
            check(&agent)?;
            let Some(p) = store_agents::pause_of(&conn, &agent)? else {
                println!("{agent} is not paused");
                return Ok(Exit::Ok);
            };
            crate::run::runloop::resume(&conn, &agent)?;
            println!("resumed {agent} (paused since {}: {})", p.at, p.reason);
            if let Some(t) = &p.task {
                println!("review flag cleared on {t}");
            }
        }
        AgentCommand::Pause { agent, reason } => {
            check(&agent)?;
            store_agents::set_pause(&conn, &agent, &crate::clock::now_rfc3339(), &reason, None)?;
            println!("paused {agent}: {reason}");
        }
    }
    Ok(Exit::Ok)
}
