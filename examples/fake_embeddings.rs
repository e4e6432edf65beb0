//! A stand-in for the Gemini batch embeddings job, so the pipeline in the README runs
//! without network: it reads a request file that `perpetual export embeddings` wrote
//! (`embeddings_input_batch_<N>.jsonl`) and prints a results file in the job's output
//! format (`{"key", "response": {"embedding": {"values": [...]}}}` per line).
//!
//! The vectors are feature-hashed bags of words (each lower-cased word adds ±1 to one of
//! `output_dimensionality` buckets, then the vector is scaled to unit length), so texts
//! that share most of their words get a high cosine similarity, as real embeddings of
//! near-duplicates do. They carry no meaning beyond that: use the real job for real work.
//!
//! ```sh
//! cargo run --release --example fake_embeddings -- outbox/zai/embeddings_input_batch_1.jsonl > results_1.jsonl
//! ```

use std::io::{BufRead, BufWriter, Write};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: fake_embeddings embeddings_input_batch_<N>.jsonl > results.jsonl")?;
    let reader = std::io::BufReader::new(std::fs::File::open(&path)?);
    let mut out = BufWriter::new(std::io::stdout().lock());
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let request: serde_json::Value = serde_json::from_str(&line)?;
        let key = request["key"]
            .as_str()
            .ok_or("a request line without a key")?;
        let text = request["request"]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap_or("");
        let dim = request["request"]["output_dimensionality"]
            .as_u64()
            .unwrap_or(768) as usize;
        let mut v = vec![0f64; dim];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = blake3::hash(word.to_lowercase().as_bytes());
            let b = h.as_bytes();
            let bucket = u64::from_le_bytes(b[..8].try_into()?) as usize % dim;
            v[bucket] += if b[8] & 1 == 0 { 1.0 } else { -1.0 };
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        let values: Vec<f64> = v.iter().map(|x| (x / norm * 1e6).round() / 1e6).collect();
        let result = serde_json::json!({"key": key, "response": {"embedding": {"values": values}}});
        writeln!(out, "{result}")?;
    }
    Ok(())
}
