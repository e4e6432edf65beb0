//! The work: the seeds' orchestration layer. The task stack (`tasks`) and what each
//! built-in kind needs (`kinds`), sessions under a budget and their wrap (`session`,
//! with `handoff` and `vcs`), grading (`grade`), the assigner (`assign`), and backfill,
//! a budgeted task around the engine, who did what (`history`: people, agents in
//! sessions, the machine), and the workbench's task kinds (`workbench`, `gaps`). Imports
//! flow down: `assign` → `kinds` →
//! `backfill` → `session` → `tasks` → `grade`; all of them → `engine`, `store`.

pub mod assign;
pub mod backfill;
pub mod gaps;
pub mod grade;
pub mod handoff;
pub mod history;
pub mod kinds;
pub mod session;
pub mod tasks;
pub mod vcs;
pub mod workbench;
