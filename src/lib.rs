//! perpetual: keeps a deduplicated database of question/answer pairs growing, fed by AI
//! agents that drop files into `inbox/<agent>/`. See ARCHITECTURE.md for the data flow
//! and the invariants; each module's doc says what it owns.
//!
//! Subsystems, imports flowing one way (`cli` → `serve` → `run` → `work` → `engine` /
//! `dataset` → `store` → the foundation):
//! - the foundation: `clock`, `config`, `root`, `budget` (the budget vocabulary),
//!   `pair` (the pair and its key), `human` (numbers as people read them);
//! - `store`: every SQL statement;
//! - `engine`: drop to database;
//! - `dataset`: the workbench (quality, near-duplicates, coverage);
//! - `work`: tasks, sessions, budgets at work, grading, handoffs, backfill;
//! - `run`: the perpetual loop, supervision, hooks, status;
//! - `serve`: the web faucet, the only async code (axum on tokio), read-only;
//! - `generate`: synthetic drops for tests, benches and demos;
//! - `cli`: one file per command.

pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod generate;
pub mod huge_pages;
pub mod human;
pub mod pair;
pub mod root;
pub mod run;
pub mod serve;
pub mod store;
pub mod work;
