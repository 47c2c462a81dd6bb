//! The load generator and the receivers every phase of the benchmark uses: producers POSTing
//! events over loopback, a receiver answering the gateway's deliveries, and a bare server for the
//! raw-HTTP baseline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// Called with the body of every request a receiver gets.
pub type OnBody = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// What producer request `i` posts: the index of the source it goes to, and its body.
pub type MakeRequest = Arc<dyn Fn(usize) -> (usize, String) + Send + Sync>;

/// A receiver that answers 200 and counts; `done` fires when `target` requests have arrived.
pub async fn start_receiver(
    count: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    done: Arc<Notify>,
) -> anyhow::Result<SocketAddr> {
    start_answering(hyper::StatusCode::OK, count, target, done, None).await
}

/// A bare HTTP server that answers every request 202 at once: what the producers reach when nothing
/// stands between them and the wire (the producers want ingest's 202).
pub async fn start_raw_server() -> anyhow::Result<SocketAddr> {
    start_answering(
        hyper::StatusCode::ACCEPTED,
        Arc::default(),
        Arc::new(AtomicUsize::new(usize::MAX)),
        Arc::default(),
        None,
    )
    .await
}

/// A loopback server that reads each request's body (handing it to `on_body`) and answers `status`
/// with an empty body, counting requests; `done` fires when `target` requests have arrived.
pub async fn start_answering(
    status: hyper::StatusCode,
    count: Arc<AtomicUsize>,
    target: Arc<AtomicUsize>,
    done: Arc<Notify>,
    on_body: Option<OnBody>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, target, done, on_body) = (count.clone(), target.clone(), done.clone(), on_body.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (count, target, done, on_body) = (count.clone(), target.clone(), done.clone(), on_body.clone());
                    async move {
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if let Some(on_body) = on_body {
                            on_body(&body);
                        }
                        if count.fetch_add(1, Ordering::Relaxed) + 1 == target.load(Ordering::Relaxed) {
                            done.notify_one();
                        }
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

/// The value at `p` (0..=1) of sorted samples.
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The median of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Posts `events` events from `producers` tasks; `pace` spaces each producer's posts. Returns ingest latencies.
pub async fn produce(
    gateway: SocketAddr,
    events: usize,
    producers: usize,
    pace: Option<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    produce_to(&[gateway], events, producers, pace).await
}

/// [`produce`] against several gateways: producer `i` posts to `gateways[i % n]`.
pub async fn produce_to(
    gateways: &[SocketAddr],
    events: usize,
    producers: usize,
    pace: Option<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    let order = Arc::new(|i: usize| {
        (0, format!(r#"{{"event":"order_created","order_id":{i},"amount":4200,"currency":"EUR"}}"#))
    });
    produce_with(gateways, &["bench"], events, producers, pace, order).await
}

/// Microseconds since the benchmark's first call of this: a clock the producers and the receiver
/// share (one process), for stamps carried in event bodies.
pub fn stamp_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Posts `events` events from `producers` tasks to `/v1/events/<source>`, request `i` built by
/// `request` (which names one of `sources` by index); `pace` spaces each producer's posts.
/// Returns ingest latencies, sorted.
pub async fn produce_with(
    gateways: &[SocketAddr],
    sources: &[&str],
    events: usize,
    producers: usize,
    pace: Option<Duration>,
    request: MakeRequest,
) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(producers).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    // Parsed once: URL parsing per request would be the producers' cost, not the gateway's.
    let urls = gateways
        .iter()
        .map(|gateway| {
            sources
                .iter()
                .map(|source| reqwest::Url::parse(&format!("http://{gateway}/v1/events/{source}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let urls = Arc::new(urls);
    let mut tasks = tokio::task::JoinSet::new();
    for producer in 0..producers {
        let (client, next, urls, request) = (client.clone(), next.clone(), urls.clone(), request.clone());
        tasks.spawn(async move {
            let urls = &urls[producer % urls.len()];
            let mut latencies = Vec::new();
            let mut ticker = pace.map(|p| {
                // Stagger the producers across one period so their posts do not arrive in bursts.
                let offset = p.mul_f64(producer as f64 / producers as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events {
                    return anyhow::Ok(latencies);
                }
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let (source, body) = request(i);
                let started = Instant::now();
                let response = client
                    .post(urls[source].clone())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                let _ = response.bytes().await?;
                if status.as_u16() != 202 {
                    bail!("ingest answered {status}");
                }
                latencies.push(started.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(events);
    while let Some(result) = tasks.join_next().await {
        all.extend(result??);
    }
    all.sort();
    Ok(all)
}
