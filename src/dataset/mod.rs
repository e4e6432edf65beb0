//! The dataset workbench: turns the database into the deliverables the seeds' task queues
//! ask for. It reads a snapshot of the pairs (every pair up to the largest id when it
//! starts: pairs are only appended), never changes a pair, keeps its own tables
//! (`store::dataset`) and writes its files through [`output`] (`outbox/<agent>/` or
//! `--out`, byte-identical for the same database, progress on a terminal).
//!
//! - [`quality`]: flags per pair, the quality report;
//! - [`near_dups`]: MinHash + LSH near-duplicate clusters, verified by exact Jaccard;
//! - [`coverage`]: pairs per indicator against a plan's targets, the gaps;
//! - [`words`]: words, shingles and MinHash signatures, shared by the above.
//!
//! It imports the foundation and `store` only.

pub mod coverage;
pub mod near_dups;
pub mod output;
pub mod quality;
pub mod words;
