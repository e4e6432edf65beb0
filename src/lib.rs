//! perpetual: keeps a deduplicated database of question/answer pairs growing, fed by AI
//! agents that drop files into `inbox/<agent>/`. See ARCHITECTURE.md for the data flow
//! and the invariants; each module's doc says what it owns.

pub mod assign;
pub mod backfill;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decode;
pub mod generate;
pub mod grade;
pub mod handoff;
pub mod hooks;
pub mod ingest;
pub mod layout;
pub mod pair;
pub mod prompt;
pub mod root;
pub mod runloop;
pub mod session;
pub mod status;
pub mod store;
pub mod supervise;
pub mod tasks;
pub mod transcript;
pub mod vcs;
pub mod watch;
