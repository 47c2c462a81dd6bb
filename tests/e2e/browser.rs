//! A real browser for tests: Debian's `chromium`, headless, driven through the DevTools protocol
//! over its WebSocket (tokio-tungstenite). Nothing is downloaded; the browser's own background
//! traffic is switched off and anything not on loopback is sent to a dead proxy and an unresolvable
//! name, so the only traffic is to the gateway under test.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{skip, Scratch};

/// How long a page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One headless chromium with one page.
pub struct Browser {
    child: Child,
    socket: Socket,
    session: String,
    next_id: u64,
    _profile: Scratch,
}

impl Browser {
    /// Starts chromium; `None` (with the reason) when it is not installed.
    pub async fn launch() -> Option<Self> {
        let Some(program) = ["chromium", "chromium-browser"].into_iter().find(|p| which(p)) else {
            skip("chromium is not installed (apt-get install chromium)");
            return None;
        };
        let profile = Scratch::new("chromium");
        let mut child = Command::new(program)
            .args([
                "--headless=new",
                "--no-sandbox", // tests run as root in CI; the page is our own console
                "--disable-gpu",
                "--disable-dev-shm-usage", // containers often give /dev/shm 64 MB, too little for chromium
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--metrics-recording-only",
                "--no-pings",
                "--proxy-server=127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            // Its own temporary files (`org.chromium.Chromium.*`, left behind by a killed browser)
            // go in the profile's directory too, which is removed with it.
            .env("TMPDIR", profile.path())
            // A group of its own, so dropping the browser kills its helper processes too (left
            // alive, they write into the profile while it is being removed, and keep it).
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // Chromium says where its DevTools socket is on stderr; the rest of stderr is drained.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let (false, Some(at)) = (sent, line.find("ws://")) {
                    let _ = tx.send(line[at..].trim().to_string());
                    sent = true;
                }
            }
        });
        let url = rx.recv_timeout(PATIENCE).expect("chromium prints its DevTools address");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("DevTools socket connects");
        let mut browser = Browser { child, socket, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.send(None, "Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached = browser
            .send(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }))
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.call("Page.enable", json!({})).await;
        Some(browser)
    }

    /// Sends one command (to the page's session, or to the browser with `None`) and returns its
    /// result; the events that arrive meanwhile are not needed and are passed over.
    async fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket.send(Message::text(message.to_string())).await.expect("DevTools socket takes a command");
        loop {
            let frame = tokio::time::timeout(PATIENCE + Duration::from_secs(10), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools socket open")
                .expect("DevTools frame");
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(text.as_str()).unwrap();
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method} failed: {answer}");
                return answer["result"].clone();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params).await
    }

    /// Loads `url` in the page (returns once the navigation committed; wait for what it shows).
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call("Runtime.evaluate", json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }))
            .await;
        assert!(result.get("exceptionDetails").is_none(), "{expression} threw: {}", result["exceptionDetails"]);
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page and returns its value. The page checks it
    /// now and after every change to the document (a MutationObserver), so nothing polls; after
    /// [`PATIENCE`] the test fails with what the page shows. `what` names it in that failure.
    pub async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let waiting = format!(
            "new Promise((resolve) => {{
               const check = () => {{ try {{ const v = ({expression}); if (v) {{ resolve(v); return true; }} }} catch {{}} return false; }};
               if (check()) return;
               const observer = new MutationObserver(() => {{ if (check()) observer.disconnect(); }});
               observer.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});
               setTimeout(() => {{ observer.disconnect(); resolve(null); }}, {});
             }})",
            PATIENCE.as_millis()
        );
        let value = self.eval(&waiting).await;
        if value.is_null() {
            let now = self
                .eval(&format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return 'threw: ' + e; }} }})()"))
                .await;
            let page = self.eval("document.getElementById('main')?.innerText ?? document.body.innerText").await;
            panic!("waited in vain for {what} ({expression}, which now gives {now}); the page reads:\n{page}");
        }
        value
    }

    /// The visible text of the first element matching `selector` ("" when there is none).
    pub async fn text(&mut self, selector: &str) -> String {
        let selector = js_string(selector);
        self.eval(&format!("document.querySelector({selector})?.innerText ?? ''"))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Types `text` into the input matching `selector` as a user would (focus, then key input).
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let quoted = js_string(selector);
        self.eval(&format!("(() => {{ const e = document.querySelector({quoted}); e.value = ''; e.focus(); }})()"))
            .await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Clicks the first element matching `selector`.
    pub async fn click(&mut self, selector: &str) {
        let quoted = js_string(selector);
        let found = self
            .eval(&format!("(() => {{ const e = document.querySelector({quoted}); e?.click(); return !!e; }})()"))
            .await;
        assert_eq!(found, json!(true), "nothing to click at {selector}");
    }

    /// Saves a PNG of the page at `path`; returns its size in bytes.
    pub async fn screenshot(&mut self, path: &Path) -> usize {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, &png).unwrap();
        png.len()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` as a JavaScript string literal.
fn js_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
