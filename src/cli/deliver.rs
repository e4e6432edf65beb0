//! What every workbench command shares on the command line: where its deliverables go,
//! and `--json`.

use crate::dataset::output::Outputs;
use crate::root::Root;
use anyhow::Result;
use std::path::PathBuf;

/// `--agent A | --out DIR`, `--json`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeliverArgs {
    /// Write the deliverables to outbox/<AGENT>/ (default zai, the seeds' worker for data
    /// work); a session's wrap commits that folder.
    #[arg(long, conflicts_with = "out")]
    pub agent: Option<String>,
    /// Write the deliverables to DIR instead.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print one JSON object with the summary instead of the text.
    #[arg(long)]
    pub json: bool,
}

impl DeliverArgs {
    /// The folder the deliverables go to.
    pub fn outputs(&self, root: &Root) -> Result<Outputs> {
        Outputs::new(root, self.agent.as_deref(), self.out.as_deref())
    }
}

/// Prints the files a run wrote, one per line.
pub fn print_files(files: &[crate::dataset::output::WrittenFile]) {
    for f in files {
        println!(
            "wrote {} ({} bytes)",
            f.path,
            crate::human::thousands(f.bytes)
        );
    }
}
