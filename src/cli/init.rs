//! `perpetual init`.

use super::Exit;
use crate::root::Root;
use anyhow::Result;

pub fn run(root: &Root) -> Result<Exit> {
    let wrote = root.write_default_config()?;
    let (config, _conn) = super::open(root)?;
    if wrote {
        println!("wrote {}", root.config_path().display());
    } else {
        println!("kept existing {}", root.config_path().display());
    }
    println!("database {}", root.db_path().display());
    for agent in config.agents.keys() {
        println!(
            "agent {agent}: drops go to {}",
            root.inbox_of(agent).display()
        );
    }
    Ok(Exit::Ok)
}
