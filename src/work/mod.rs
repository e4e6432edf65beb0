//! The work: the seeds' orchestration layer. The task stack (`tasks`) and what each
//! built-in kind needs (`kinds`), sessions under a budget and their wrap (`session`,
//! with `handoff` and `vcs`), grading (`grade`), the assigner (`assign`, with the
//! coverage `gaps` it hands out), and backfill, a budgeted task around the engine; who
//! did what (`history`: people, agents in sessions, the machine); the workbench's task
//! kinds (`workbench`: quality, near_dups, coverage, import_db, and the deliverables of
//! `deliverables`: export_rag, export_embeddings, import_embeddings, split, charts),
//! each run in a session of its own. Imports flow down: `assign` → `kinds` →
//! `workbench` → `deliverables`, `backfill` → `session` → `tasks` → `grade`, `history`;
//! all of them → `engine`, `dataset`, `store`.

pub mod assign;
pub mod backfill;
pub mod deliverables;
pub mod gaps;
pub mod grade;
pub mod handoff;
pub mod history;
pub mod kinds;
pub mod session;
pub mod tasks;
pub mod vcs;
pub mod workbench;
