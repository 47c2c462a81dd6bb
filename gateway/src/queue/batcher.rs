//! Group commit: requests submitted concurrently (by many ingest connections, or many delivery
//! tasks) are handed to one flush call, so the store sees one round trip (Redis) or one transaction
//! (embedded) per batch instead of one per request. With no concurrency a batch is a single request
//! and costs no extra wait: the loop flushes whatever has queued up as soon as the previous flush is
//! done.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Submits requests to a background task that flushes them in batches.
pub struct Batcher<Req, Resp> {
    tx: mpsc::Sender<(Req, oneshot::Sender<Resp>)>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the flushing task. `flush` gets up to `max` requests and must return one response per
    /// request, in order.
    pub fn spawn<F, Fut>(max: usize, flush: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(Req, oneshot::Sender<Resp>)>(max * 4);
        tokio::spawn(async move {
            let mut requests = Vec::with_capacity(max);
            let mut waiters = Vec::with_capacity(max);
            while let Some((request, waiter)) = rx.recv().await {
                requests.push(request);
                waiters.push(waiter);
                while requests.len() < max {
                    match rx.try_recv() {
                        Ok((request, waiter)) => {
                            requests.push(request);
                            waiters.push(waiter);
                        }
                        Err(_) => break,
                    }
                }
                let responses = flush(std::mem::take(&mut requests)).await;
                for (waiter, response) in waiters.drain(..).zip(responses) {
                    // A submitter that gave up waiting is no error here.
                    let _ = waiter.send(response);
                }
            }
        });
        Self { tx }
    }

    /// Submits one request and waits for its response; `None` when the batcher has stopped.
    pub async fn submit(&self, request: Req) -> Option<Resp> {
        let (waiter, response) = oneshot::channel();
        self.tx.send((request, waiter)).await.ok()?;
        response.await.ok()
    }
}
