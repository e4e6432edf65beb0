//! Cosine (in progress).
