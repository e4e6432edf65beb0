//! The engine: a drop becomes rows. Bytes are decoded (`decode`), their layout recognised
//! and each pair validated (`layout`), keyed and written exactly once by one writer
//! (`ingest`), live from the inbox (`watch`); SQLite databases, dropped or named, are imported row
//! by row with the same keys, dedup and ledger (`import_db`). It imports only the foundation (`config`,
//! `root`, `clock`, `pair`) and `store`.

pub mod decode;
pub mod import_db;
pub mod ingest;
pub mod layout;
pub mod watch;
