//! The built-in task kinds: what each kind's params must be before a task of that kind is
//! stored. The task stack (`work::tasks`) stores params without reading them; every
//! command and the assigner pass [`check`] when they add tasks, so a task the loop cannot
//! run is refused when it is added, not when its turn comes.

use crate::store::tasks::TaskKind;
use crate::work::backfill;
use anyhow::Result;

/// Checks that a task's kind and its params fit together (a
/// [`crate::work::tasks::ParamsCheck`]).
pub fn check(id: &str, kind: TaskKind, params: Option<&serde_json::Value>) -> Result<()> {
    match kind {
        TaskKind::Agent | TaskKind::Ingest | TaskKind::Duty => Ok(()),
        TaskKind::Backfill => backfill::check_params(id, params),
        TaskKind::Quality | TaskKind::NearDups | TaskKind::Coverage | TaskKind::ImportDb => {
            crate::work::workbench::check_params(id, kind, params)
        }
        TaskKind::ExportRag
        | TaskKind::ExportEmbeddings
        | TaskKind::ImportEmbeddings
        | TaskKind::Split
        | TaskKind::Charts => crate::work::deliverables::check_params(id, kind, params),
    }
}
