//! The work: the seeds' orchestration layer. The task stack (`tasks`) and what each
//! built-in kind needs (`kinds`), sessions under a budget and their wrap (`session`,
//! with `handoff` and `vcs`), grading (`grade`), the assigner (`assign`), and backfill,
//! a budgeted task around the engine; the workbench's deliverable kinds
//! (`deliverables`: export_rag, export_embeddings, import_embeddings, split, charts).
//! Imports flow down: `assign` → `kinds` → `deliverables`, `backfill` → `session` →
//! `tasks` → `grade`; all of them → `engine`, `dataset`, `store`.

pub mod assign;
pub mod backfill;
pub mod deliverables;
pub mod grade;
pub mod handoff;
pub mod kinds;
pub mod session;
pub mod tasks;
pub mod vcs;
