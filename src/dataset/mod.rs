//! The dataset workbench: turns the database into the deliverables the seeds' task queues
//! ask for. It reads a snapshot of the pairs (every pair up to the largest id when it
//! starts: pairs are only appended), never changes a pair, keeps its own tables
//! (`store::dataset`) and writes its files through [`output`] (`outbox/<agent>/` or
//! `--out`, byte-identical for the same database, progress on a terminal).
//!
//! - [`quality`]: flags per pair, the quality report;
//! - [`near_dups`]: MinHash + LSH near-duplicate clusters, verified by exact Jaccard;
//! - [`coverage`]: pairs per indicator against a plan's targets, the gaps;
//! - [`words`]: words, shingles and MinHash signatures, shared by the above;
//! - [`union_find`]: disjoint sets, shared by the clusterings and [`groups`].
//!
//! Part 2, what leaves the database (its tables: `store::embeddings`, `store::splits`):
//! - [`formats`]: one document per pair in JSON Lines, CSV and Parquet, shared by the
//!   RAG export and the splits;
//! - [`groups`]: the near-duplicate clusters of several methods joined into groups;
//! - [`export`]: the RAG export (`rag_export/`);
//! - [`embeddings`]: request batches for the Gemini batch embeddings API, and the import
//!   of its results (a command, or a results file dropped into an inbox);
//! - [`cosine`]: semantic near-duplicates from the stored vectors;
//! - [`split`]: stable, stratified train/val/test splits that keep clusters together;
//! - [`charts`]: the `visualizations/` folder.
//!
//! It imports the foundation and `store` only.

pub mod coverage;
pub mod near_dups;
pub mod output;
pub mod quality;
pub mod union_find;
pub mod words;

pub mod charts;
pub mod cosine;
pub mod embeddings;
pub mod export;
pub mod formats;
pub mod groups;
pub mod split;
