//! Concurrent requests for the same answer share one computation: a request waits for
//! the computation in progress, then takes the next one, which started after it arrived,
//! together with everyone else who arrived meanwhile. So every answer reflects the
//! database at or after its request's arrival, and fifty clients asking at once cost
//! about two computations instead of fifty, one at a time. The next starts no sooner than
//! twice the last one's time after it ended (within [`MIN_GAP`]..[`MAX_GAP`]): a
//! computation holds a read snapshot, and while any snapshot is open SQLite cannot
//! restart the WAL, which then grows and slows the writer's lookups (BENCHMARKS.md, "Web
//! faucet under load"), so readers must leave it gaps.

use axum::body::Bytes;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The least pause between the end of one computation and the start of the next; after a
/// slow one, twice its time, at most [`MAX_GAP`].
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// The longest pause between two computations.
pub const MAX_GAP: Duration = Duration::from_secs(2);

/// The last answer, when its computation started, and when the next may start.
#[derive(Default)]
pub(crate) struct Coalesce {
    last: Mutex<Option<Last>>,
}

struct Last {
    started: Instant,
    body: Bytes,
    next_at: Instant,
}

impl Coalesce {
    /// The answer: the last one if its computation started after this call, else a new
    /// one from `compute`.
    pub async fn get<F, Fut>(&self, compute: F) -> anyhow::Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<Bytes>>,
    {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some(l) = last.as_ref() {
            if l.started >= arrived {
                return Ok(l.body.clone());
            }
            // Others who arrive while this waits share what it computes.
            tokio::time::sleep_until(l.next_at.into()).await;
        }
        let started = Instant::now();
        let body = compute().await?;
        let ended = Instant::now();
        *last = Some(Last {
            started,
            body: body.clone(),
            next_at: ended + (ended - started).saturating_mul(2).clamp(MIN_GAP, MAX_GAP),
        });
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_during_a_computation_share_the_next_one() {
        let coalesce = Arc::new(Coalesce::default());
        let computed = Arc::new(AtomicUsize::new(0));
        let mut callers = Vec::new();
        for _ in 0..20 {
            let (c, n) = (coalesce.clone(), computed.clone());
            callers.push(tokio::spawn(async move {
                c.get(|| async move {
                    let k = n.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok(Bytes::from(k.to_string()))
                })
                .await
                .unwrap()
            }));
        }
        for c in callers {
            c.await.unwrap();
        }
        let n = computed.load(Ordering::SeqCst);
        assert!(n <= 3, "20 callers at once took {n} computations");
        // A later caller never gets an answer computed before it asked.
        let before = computed.load(Ordering::SeqCst);
        let answer = coalesce
            .get(|| async { Ok(Bytes::from("fresh")) })
            .await
            .unwrap();
        assert_eq!(answer, "fresh");
        assert_eq!(computed.load(Ordering::SeqCst), before);
    }
}
