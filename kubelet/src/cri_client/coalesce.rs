//! List calls made at the same time share one request to the runtime.
//!
//! Every pod worker lists its pod's sandboxes and containers at each sync,
//! and workers started together sync together: with hundreds of pods that
//! is hundreds of list requests a second, and a runtime answers each by
//! looking at every container it has (berth's reads every container's
//! state), so the runtime's time grows with the square of the pods. Here a
//! caller joins the next request not yet sent, and at most one request of a
//! kind is in flight: while it is, new callers gather for the next one, so
//! the runtime sees about one list per round trip however many workers ask.
//!
//! This is not a cache: the request a caller gets its answer from is sent
//! after the caller asked, so it sees everything done before the call (a
//! worker listing right after starting a container finds it).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::CriClientError;

/// The answer a batch of callers shares.
type Answer<T> = Result<Arc<Vec<T>>, Arc<CriClientError>>;

/// One kind of list request, shared by the callers that overlap.
pub(super) struct Coalescer<T> {
    /// The batch new callers join; its request is not sent yet.
    pending: Mutex<Option<watch::Receiver<Option<Answer<T>>>>>,
    /// Held while a request is in flight.
    sending: tokio::sync::Mutex<()>,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(None),
            sending: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Coalescer<T> {
    /// The answer of a `fetch` sent after this call began, shared with the
    /// callers that joined the same batch.
    pub(super) async fn call<F, Fut>(&self, fetch: F) -> Result<Arc<Vec<T>>, CriClientError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<T>, CriClientError>>,
    {
        let joined = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match &*pending {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *pending = Some(rx.clone());
                    Ok((tx, rx))
                }
            }
        };
        match joined {
            Ok((tx, rx)) => {
                let turn = self.sending.lock().await;
                // Callers from now on wait for the next request: this one
                // may already be too old for them.
                self.forget(&rx);
                let answer: Answer<T> = fetch().await.map(Arc::new).map_err(Arc::new);
                drop(turn);
                tx.send_replace(Some(answer.clone()));
                answer.map_err(|e| e.duplicate())
            }
            Err(mut rx) => {
                let shared = match rx.wait_for(Option::is_some).await {
                    Ok(answer) => answer.clone(),
                    Err(_) => None,
                };
                match shared {
                    Some(answer) => answer.map_err(|e| e.duplicate()),
                    // The leader was dropped before its request was
                    // answered (its caller gave up): ask alone.
                    None => {
                        self.forget(&rx);
                        fetch().await.map(Arc::new)
                    }
                }
            }
        }
    }

    /// Takes the batch of `rx` out of reach of new callers, if it still is
    /// the pending one.
    fn forget(&self, rx: &watch::Receiver<Option<Answer<T>>>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.as_ref().is_some_and(|p| p.same_channel(rx)) {
            *pending = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tonic::Code;

    use super::*;

    #[tokio::test]
    async fn overlapping_calls_share_requests_sent_after_them() {
        let c = Arc::new(Coalescer::<usize>::default());
        let sent = Arc::new(AtomicUsize::new(0));
        let calls = (0..50).map(|_| {
            let c = c.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                // What the runtime "has" when the call is made.
                let asked = sent.load(Ordering::SeqCst);
                let got = c
                    .call(|| async {
                        let n = sent.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(vec![n])
                    })
                    .await
                    .unwrap();
                (asked, got[0])
            })
        });
        let results = futures::future::join_all(calls).await;
        for r in results {
            let (asked, answered_by) = r.unwrap();
            assert!(
                answered_by > asked,
                "answered by request {answered_by}, sent before the call (after {asked})"
            );
        }
        let n = sent.load(Ordering::SeqCst);
        assert!(n < 50, "{n} requests for 50 overlapping calls");
    }

    #[tokio::test]
    async fn a_failure_reaches_every_caller_of_the_batch() {
        let c = Coalescer::<u8>::default();
        let fail = || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(CriClientError::Rpc {
                rpc: "ListContainers",
                code: Code::Unavailable,
                message: "down".into(),
            })
        };
        let (a, b) = tokio::join!(c.call(fail), c.call(fail));
        for r in [a, b] {
            assert_eq!(r.unwrap_err().code(), Some(Code::Unavailable));
        }
    }

    #[tokio::test]
    async fn a_dropped_leader_does_not_strand_its_batch() {
        let c = Coalescer::<u8>::default();
        // Boxed, so that dropping the leader drops the future itself.
        let mut leader = Box::pin(c.call(futures::future::pending));
        let mut joiner = Box::pin(c.call(|| async { Ok(vec![7]) }));
        // Both enter: the leader holds the sending turn, the joiner waits.
        tokio::select! {
            biased;
            _ = &mut leader => unreachable!(),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        let first = tokio::time::timeout(Duration::from_millis(10), &mut joiner).await;
        assert!(first.is_err(), "the joiner waits for its batch");
        drop(leader);
        let got = tokio::time::timeout(Duration::from_secs(1), joiner)
            .await
            .expect("the joiner asks alone once its leader is gone")
            .unwrap();
        assert_eq!(*got, [7]);
        // The next caller leads a batch of its own.
        assert_eq!(*c.call(|| async { Ok(vec![8]) }).await.unwrap(), [8]);
    }
}
