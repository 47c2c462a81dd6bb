//! Test harness: a real `redis-server` on a free port, real HTTP receivers on loopback whose answers
//! a test scripts, the example plugins built from source, and gateways started from TOML.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;

/// The secret every test endpoint signs with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The admin token of test gateways.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("gateway/ has a parent").to_path_buf()
}

/// A port that is free now, for a server that a test starts by number (`redis-server`, `sluice
/// run`). It is taken just below the kernel's ephemeral range, where the kernel hands out no port by
/// itself: neither to a listener bound to port 0 (every receiver, every in-process gateway) nor as
/// the source port of an outgoing connection, both of which could otherwise take it between this
/// check and the server's bind. Successive calls go round the range from a start of the process'
/// own, so two calls of one run never return the same port while it is in use.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // (first port, number of ports, where this process starts in them); None: no room below.
    static RANGE: OnceLock<Option<(u32, u32, u32)>> = OnceLock::new();
    let range = *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let span = ephemeral_low.saturating_sub(10_000).min(12_000);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (span >= 1000).then(|| (ephemeral_low - span, span, (std::process::id() ^ nanos.subsec_nanos()) % span))
    });
    if let Some((base, span, start)) = range {
        for _ in 0..span {
            let port = base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if StdListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The `sluice` binary under test.
pub const SLUICE_BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A process of the test's own (usually `sluice`), SIGKILLed on drop.
pub struct SluiceProcess(pub std::process::Child);

impl SluiceProcess {
    /// `sluice <args>` with `env` added, stderr appended to `log` (`None`: discarded).
    pub fn spawn(args: &[&str], env: &[(&str, String)], log: Option<&Path>) -> Self {
        Self::spawn_program(SLUICE_BIN, args, env, log)
    }

    /// `program <args>`, as [`SluiceProcess::spawn`].
    pub fn spawn_program(program: &str, args: &[&str], env: &[(&str, String)], log: Option<&Path>) -> Self {
        let stderr = match log {
            Some(log) => {
                std::process::Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            }
            None => std::process::Stdio::null(),
        };
        let mut command = std::process::Command::new(program);
        command.args(args).stdout(std::process::Stdio::null()).stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        Self(command.spawn().unwrap())
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh directory of the test's own under the system's temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The key pattern of every stored event's record (26 characters of ULID).
pub const EVENT_KEYS: &str = "sluice:*:e:??????????????????????????";

/// A `redis-server` of the test's own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    killed: bool,
}

impl RedisServer {
    /// Starts a server on a free port. A port is free when [`free_port`] looks, and another test may
    /// take it before this server binds it: then this one cannot start, and it is started again on
    /// another port.
    pub async fn start() -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start_on(free_port()).await {
                Ok(server) => return server,
                Err(why) => last = why,
            }
        }
        panic!("{last}");
    }

    /// Starts a server on `port` (e.g. again, after [`RedisServer::kill`]).
    pub async fn start_on(port: u16) -> Self {
        Self::try_start_on(port).await.unwrap_or_else(|why| panic!("{why}"))
    }

    async fn try_start_on(port: u16) -> Result<Self, String> {
        // Its own working directory, so files Redis may write (e.g. when a test turns AOF on) stay
        // out of the source tree; emptied first, so nothing an earlier run left on this port loads.
        let dir = std::env::temp_dir().join(format!("sluice-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self::try_spawn(port, &["--save", "", "--appendonly", "no", "--dir", dir.to_str().unwrap()]).await
    }

    /// Starts a server on `port` that keeps its data in `dir` with an fsync per write (AOF,
    /// `appendfsync always`): what the README asks of production, so a restart loses nothing
    /// acknowledged.
    pub async fn start_persistent(port: u16, dir: &Path) -> Self {
        let dir = dir.to_str().unwrap();
        Self::spawn(port, &["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir", dir]).await
    }

    /// Starts a server on `port` with `args` added (e.g. a cluster node's settings).
    pub async fn start_with(port: u16, args: &[&str]) -> Self {
        Self::spawn(port, args).await
    }

    async fn spawn(port: u16, args: &[&str]) -> Self {
        Self::try_spawn(port, args).await.unwrap_or_else(|why| panic!("{why}"))
    }

    async fn try_spawn(port: u16, args: &[&str]) -> Result<Self, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let mut server = Self { port, child, killed: false };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits until this server answers on its port. The server that answers must be this one
    /// (`INFO server` names its process): a port taken by another test's Redis would otherwise be
    /// shared with it, silently.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = redis::Client::open(self.url()).unwrap();
        let pid = self.child.id().to_string();
        for _ in 0..500 {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return Err(format!("redis-server on port {} ended at start ({exit}): port taken?", self.port));
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if let Ok(info) = redis::cmd("INFO").arg("server").query_async::<String>(&mut conn).await {
                    let answering = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
                    if answering == Some(pid.as_str()) {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
        Err(format!("redis-server on port {} did not come up as its own process", self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// How many keys match `pattern` (e.g. [`EVENT_KEYS`], one per stored event).
    pub async fn count_keys(&self, pattern: &str) -> usize {
        let mut conn = self.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap();
        keys.len()
    }

    /// How many deliveries the stored events hold: each event record names its deliveries'
    /// endpoints, a line each after the counts, source and type, up to a blank line, whether or not
    /// a delivery has a hash of its own yet.
    pub async fn stored_deliveries(&self) -> usize {
        let mut conn = self.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg(EVENT_KEYS).query_async(&mut conn).await.unwrap();
        let mut deliveries = 0;
        for key in keys {
            let record: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap();
            let head = record.split(|&b| b == b'\n').take_while(|line| !line.is_empty()).count();
            deliveries += head - 3;
        }
        deliveries
    }

    /// Whether it has not been killed.
    pub fn is_running(&self) -> bool {
        !self.killed
    }

    /// Kills the server now (Redis "going away").
    pub fn kill(&mut self) {
        self.killed = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    StatusWithHeader(u16, &'static str, String),
    Hang(Duration),
    /// Out of every 100 requests, `fail` get 500 and `hang` hang for `hang_for`; the rest get 200.
    /// The pattern is fixed (a permutation of 0..100), so runs are repeatable.
    Mixed {
        fail: u64,
        hang: u64,
        hang_for: Duration,
    },
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// When the request arrived.
    pub at: std::time::Instant,
    /// Whether it was answered 2xx at once (not an error, not a hang the sender gives up on).
    pub ok: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct Script {
    plan: VecDeque<Answer>,
    default: Answer,
    served: u64,
}

impl Script {
    /// The answer to the next request, with `Mixed` resolved to a plain answer.
    fn next(&mut self) -> Answer {
        let answer = self.plan.pop_front().unwrap_or_else(|| self.default.clone());
        self.served += 1;
        match answer {
            Answer::Mixed { fail, hang, hang_for } => {
                // 37 is coprime with 100, so this visits every residue once per 100 requests.
                let slot = (self.served * 37) % 100;
                if slot < hang {
                    Answer::Hang(hang_for)
                } else if slot < hang + fail {
                    Answer::Status(500)
                } else {
                    Answer::Status(200)
                }
            }
            other => other,
        }
    }
}

/// A real HTTP receiver on loopback that records every request and answers as scripted.
pub struct Receiver {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    requests: mpsc::UnboundedReceiver<Received>,
    log: Arc<Mutex<Vec<Received>>>,
    concurrency: Arc<Concurrency>,
}

/// Requests being answered right now, and the most there ever were at once.
#[derive(Default)]
struct Concurrency {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script { plan: VecDeque::new(), default: Answer::Status(200), served: 0 }));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, requests) = mpsc::unbounded_channel();
        let concurrency = Arc::new(Concurrency::default());
        let (s, l, c) = (script.clone(), log.clone(), concurrency.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (script, log, tx, concurrency) = (s.clone(), l.clone(), tx.clone(), c.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (script, log, tx, concurrency) =
                            (script.clone(), log.clone(), tx.clone(), concurrency.clone());
                        async move {
                            use std::sync::atomic::Ordering::SeqCst;
                            let at = std::time::Instant::now();
                            let now = concurrency.now.fetch_add(1, SeqCst) + 1;
                            concurrency.most.fetch_max(now, SeqCst);
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let answer = script.lock().unwrap().next();
                            let ok = matches!(answer, Answer::Status(200..=299));
                            let received = Received { headers: parts.headers, body, at, ok };
                            log.lock().unwrap().push(received.clone());
                            let _ = tx.send(received);
                            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                            match answer {
                                Answer::Status(code) => *response.status_mut() = StatusCode::from_u16(code).unwrap(),
                                Answer::StatusWithHeader(code, name, value) => {
                                    *response.status_mut() = StatusCode::from_u16(code).unwrap();
                                    response.headers_mut().insert(name, value.parse().unwrap());
                                }
                                Answer::Hang(how_long) => tokio::time::sleep(how_long).await,
                                Answer::Mixed { .. } => unreachable!("resolved by Script::next"),
                            }
                            concurrency.now.fetch_sub(1, SeqCst);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, script, requests, log, concurrency }
    }

    /// The most requests this receiver was answering at the same time.
    pub fn most_concurrent(&self) -> usize {
        self.concurrency.most.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers these first, in order, then the default.
    pub fn answer_next(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().plan.extend(answers);
    }

    pub fn answer_always(&self, answer: Answer) {
        self.script.lock().unwrap().default = answer;
    }

    /// Waits for the next request.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.requests.recv())
            .await
            .expect("receiver got no request in time")
            .expect("receiver closed")
    }

    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
}

/// Says why a test does not run here (a tool or toolchain is missing). Under `.ci/run`
/// (`REQUIRE_ALL_TEST_TOOLS=1`, where everything is installed) that is a failure, not a skip: a
/// test that quietly skips there proves nothing.
pub fn skip(reason: &str) {
    if std::env::var_os("REQUIRE_ALL_TEST_TOOLS").is_some_and(|v| v == "1") {
        panic!("required test prerequisite missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Builds the example plugins once per test run; `None` (with the reason printed) when no guest
/// toolchain is available.
pub fn plugins_dir() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let root = repo_root().join("plugins");
        let status = Command::new("bash").arg(root.join("build.sh")).stdout(Stdio::null()).status();
        match status {
            Ok(s) if s.success() => Ok(root.join("dist")),
            Ok(s) => Err(format!("plugins/build.sh failed ({s}); see its output above")),
            Err(e) => Err(format!("cannot run plugins/build.sh: {e}")),
        }
    });
    match result {
        Ok(dir) => Some(dir.clone()),
        Err(reason) => {
            skip(&format!("example plugins could not be built: {reason}"));
            None
        }
    }
}

/// One built example plugin, or `None` (with the reason printed) when its language's toolchain is missing.
pub fn plugin_file(name: &str) -> Option<PathBuf> {
    let path = plugins_dir()?.join(format!("{name}.wasm"));
    if path.exists() {
        Some(path)
    } else {
        skip(&format!("{name} was not built (its toolchain is missing; see plugins/build.sh output)"));
        None
    }
}

/// The TOML that every test gateway starts from: loopback allowed, fast retries, its own Redis.
pub fn base_toml(redis: &RedisServer) -> String {
    base_toml_with(&format!("[redis]\nurl = \"{}\"\ntimeout = \"500ms\"\n", redis.url()))
}

/// The base config with no `[redis]` section, hence on the embedded backend (its `[queue] path` is
/// the caller's to add: the default is the user's data directory).
pub fn base_toml_embedded() -> String {
    base_toml_with("")
}

fn base_toml_with(store: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536

{store}

[admin]
token = "{ADMIN_TOKEN}"

[retry]
schedule = ["0s", "50ms", "50ms"]
jitter = 0.0

[security]
allow_private_destinations = true
allow_unauthenticated_sources = true
"#
    )
}

/// An `[[endpoints]]` table.
pub fn endpoint_toml(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[endpoints]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

pub async fn start_gateway(toml: &str) -> sluice::Gateway {
    let config = sluice::config::from_toml(toml).expect("test config parses");
    sluice::Gateway::start(config).await.expect("gateway starts")
}

/// A client for talking to gateways.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn post_event(gateway: SocketAddr, source: &str, body: &str) -> (u16, Value) {
    post_event_as(gateway, source, body, None).await
}

/// Posts an event with `Authorization: Bearer <token>` when a token is given.
pub async fn post_event_as(gateway: SocketAddr, source: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = client()
        .post(format!("http://{gateway}/v1/events/{source}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
}

pub async fn admin_get(gateway: SocketAddr, path: &str) -> (u16, Value) {
    let response = client().get(format!("http://{gateway}{path}")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
}

pub async fn admin_post(gateway: SocketAddr, path: &str) -> (u16, Value) {
    let response = client().post(format!("http://{gateway}{path}")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
}

/// Waits until a gateway (e.g. a `sluice run` just spawned) answers `/healthz` at `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    wait_listening_for(addr, PATIENCE).await
}

/// How long a gateway that compiles plugins may take to start: a Python component compiles for
/// 10-15 s on this machine, longer while the rest of the suite runs beside it.
pub const COMPILE_PATIENCE: Duration = Duration::from_secs(180);

/// A compile cache shared by the test gateways (it is keyed by content), so each plugin file is
/// compiled once per machine rather than once per test.
pub fn shared_wasm_cache() -> PathBuf {
    std::env::temp_dir().join("sluice-test-wasm-cache")
}

/// [`wait_listening`] with a longer patience, e.g. [`COMPILE_PATIENCE`].
pub async fn wait_listening_for(addr: SocketAddr, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    while client().get(format!("http://{addr}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "sluice did not start listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a delivery until its state is `state`, and returns it.
pub async fn wait_for_state(gateway: SocketAddr, delivery_id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, view) = admin_get(gateway, &format!("/v1/deliveries/{delivery_id}")).await;
        if status == 200 && view["state"] == state {
            return view;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery {delivery_id} never became {state}: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the unlabelled metric `name` in a `/metrics` text, if it is there.
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Verifies a Standard Webhooks signature independently of the gateway's signer.
pub fn signature_valid(received: &Received) -> bool {
    signature_valid_with(received, SECRET)
}

/// Whether one of `webhook-signature`'s signatures verifies with `secret`, as a receiver holding
/// only that secret checks it.
pub fn signature_valid_with(received: &Received, secret: &str) -> bool {
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", received.header("webhook-id"), received.header("webhook-timestamp")).as_bytes());
    mac.update(&received.body);
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    received.header("webhook-signature").split(' ').any(|s| s == expected)
}
