//! The engine: a drop becomes rows. A file is opened without following links or
//! blocking and read within its limit (`intake`), its bytes decoded (`decode`), their
//! layout recognised and each pair validated (`layout`), keyed and written exactly once
//! by one writer (`ingest`), live from the inbox (`watch`); `names` owns what an inbox
//! entry's name means and how names are shown; SQLite databases, dropped or named, are
//! imported row by row with the same keys, dedup and ledger (`import_db`). It imports only the foundation (`config`,
//! `root`, `clock`, `pair`) and `store`.

pub mod decode;
pub mod embeddings;
pub mod import_db;
pub mod ingest;
pub mod intake;
pub mod layout;
pub mod names;
pub mod watch;
