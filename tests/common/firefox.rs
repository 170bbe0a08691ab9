//! A small WebDriver BiDi client that drives Debian's Firefox ESR for the browser tests:
//! launch a headless Firefox with a fresh profile, open pages (each a window in its own user
//! context: own cookies, storage, cache), evaluate JavaScript, type like a user, wait for
//! conditions with a deadline, and collect console errors and uncaught exceptions. BiDi is
//! Firefox's own remote protocol (JSON over a WebSocket, much like CDP), so nothing is
//! downloaded and no driver binary is needed. Without Firefox the tests say loudly that they
//! were skipped (and fail under `CI=true`).
//!
//! It owns the Firefox process, its profile directory, and the I/O thread that talks to it.
//! One Firefox can serve every test of a test binary ([`Firefox::shared_or_skip`]): its
//! connection lives on a thread of its own, not on any one test's runtime, and it quits when
//! the test process exits, however that happens.
//!
//! Firefox needs no pref and no flag beyond `--headless`: as shipped, a page on
//! `http://127.0.0.1:PORT` reaches `https://localhost:PORT` over WebTransport pinning the
//! served certificate digest (`serverCertificateHashes`). The profile is empty; the remote
//! agent applies its own recommended automation prefs.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::browser::{ConsoleEntry, Drive, WAIT, exited_within, under_ci};

/// Where Firefox is: `$FIREFOX` when set (only there), else Debian's Firefox ESR.
fn firefox_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FIREFOX") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    ["/usr/lib/firefox-esr/firefox-esr", "/usr/bin/firefox-esr"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;
type Logs = Arc<Mutex<HashMap<String, Vec<ConsoleEntry>>>>;

/// A headless Firefox and a WebDriver BiDi session with it. Quits on drop.
pub struct Firefox {
    /// `sh`, which runs Firefox and stops it once this end of its stdin closes (see
    /// [`Firefox::launch`]).
    keeper: Child,
    /// Closing it is what stops Firefox.
    lifeline: Option<ChildStdin>,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    logs: Logs,
    next_id: AtomicU64,
    /// Firefox's last lines on stderr, for failure messages.
    stderr: Arc<Mutex<VecDeque<String>>>,
    pub version: String,
}

/// The Firefox shared by the tests of this binary: launched by the first test that asks.
static SHARED: OnceCell<Firefox> = OnceCell::const_new();

impl Firefox {
    /// Launches a Firefox of this test's own, or returns None (after saying so loudly) when
    /// it is not installed. Under `CI=true` a missing browser panics instead.
    pub async fn launch_or_skip(test: &str) -> Option<Firefox> {
        let path = installed_or_skip(test)?;
        Some(Firefox::launch(path).await)
    }

    /// The one Firefox of this test binary (launched on first use; it quits when the test
    /// process exits), or None (after saying so loudly) when Firefox is not installed. Every
    /// page still gets its own user context, so tests sharing it share no state.
    pub async fn shared_or_skip(test: &str) -> Option<&'static Firefox> {
        let path = installed_or_skip(test)?;
        Some(SHARED.get_or_init(|| Firefox::launch(path)).await)
    }

    async fn launch(path: PathBuf) -> Firefox {
        let started = Instant::now();
        // The profile outlives this process when the Firefox is the shared one (statics are
        // never dropped), so the keeper below removes it, not a TempDir guard.
        let profile = tempfile::Builder::new()
            .prefix("wtchat-firefox-")
            .tempdir()
            .unwrap()
            .keep();
        // `sh` holds Firefox's lifetime: it starts Firefox in the background, then blocks
        // reading its stdin, a pipe whose only writer is this process. When that pipe closes —
        // on drop, or because the test process exited or crashed — `read` returns, and the
        // shell stops Firefox and deletes the profile. No orphaned browsers, whatever happens
        // to the test binary. The shell's own stderr goes nowhere: by then the pipe that
        // carried Firefox's may have no reader, and a write to it would kill the shell
        // (SIGPIPE) before it cleans up.
        let mut keeper = Command::new("sh")
            .args([
                "-c",
                r#"profile=$1; shift
                   "$@" & browser=$!
                   exec 2>/dev/null
                   read -r _
                   kill "$browser"; wait "$browser"
                   rm -rf "$profile""#,
                "firefox-keeper",
            ])
            .arg(&profile)
            .arg(&path)
            .args([
                "--headless",
                // A separate instance, never a message to some other Firefox on the machine.
                "--no-remote",
                // Port 0: Firefox picks a free one and says which on stderr.
                "--remote-debugging-port=0",
                "--profile",
            ])
            .arg(&profile)
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let lifeline = keeper.stdin.take();

        // Firefox prints `WebDriver BiDi listening on ws://127.0.0.1:PORT` once it listens.
        // The pipe is read to its end even after that: a full stderr pipe would block Firefox.
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (found, address) = oneshot::channel::<String>();
        {
            let pipe = keeper.stderr.take().unwrap();
            let tail = stderr.clone();
            std::thread::spawn(move || {
                let mut found = Some(found);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(at) = line.find("ws://")
                        && line.contains("BiDi")
                        && let Some(found) = found.take()
                    {
                        let _ = found.send(line[at..].trim().to_string());
                    }
                    let mut tail = tail.lock().unwrap();
                    if tail.len() == 40 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        let mut firefox = Firefox {
            keeper,
            lifeline,
            out: mpsc::unbounded_channel().0,
            pending: Arc::default(),
            logs: Arc::default(),
            next_id: AtomicU64::new(1),
            stderr,
            version: String::new(),
        };
        let address = match tokio::time::timeout(WAIT, address).await {
            Ok(Ok(address)) => address,
            // The stderr reader ended (Firefox exited) or the deadline passed: either way
            // dropping `firefox` stops whatever is left.
            _ => panic!(
                "firefox did not open its WebDriver BiDi port within {WAIT:?}; its stderr:\n{}",
                firefox.stderr_tail()
            ),
        };
        let port = address
            .trim_start_matches("ws://")
            .split(['/', ' '])
            .next()
            .and_then(|host_port| host_port.rsplit(':').next())
            .and_then(|port| port.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no port in firefox's address line `{address}`"));

        // The connection lives on a thread (and runtime) of its own: a test's runtime ends
        // with the test, and a shared Firefox must outlive every test that used it.
        let (connected, connection) = oneshot::channel();
        let (pending, logs) = (firefox.pending.clone(), firefox.logs.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve_connection(port, pending, logs, connected));
        });
        firefox.out = match tokio::time::timeout(WAIT, connection).await {
            Ok(Ok(Ok(out))) => out,
            Ok(Ok(Err(e))) => panic!("cannot connect to firefox's BiDi socket: {e}"),
            _ => panic!("firefox's BiDi socket did not answer within {WAIT:?}"),
        };

        let session = firefox
            .call("session.new", json!({"capabilities": {}}))
            .await
            .unwrap_or_else(|e| panic!("session.new failed: {e}"));
        firefox.version = session["capabilities"]["browserVersion"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        // Every page's console, from the start: entries carry their browsing context.
        firefox
            .call("session.subscribe", json!({"events": ["log.entryAdded"]}))
            .await
            .unwrap_or_else(|e| panic!("session.subscribe failed: {e}"));
        eprintln!(
            "firefox {} ready in {:?}",
            firefox.version,
            started.elapsed()
        );
        firefox
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Calls a BiDi command; Err is the protocol's error object.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({"id": id, "method": method, "params": params});
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, reply);
        if self.out.send(Message::text(message.to_string())).is_err() {
            self.pending.lock().unwrap().remove(&id);
            return Err(json!({"message": "firefox connection closed"}));
        }
        match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(json!({"message": "firefox connection closed"})),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(json!({"message": format!("{method} timed out")}))
            }
        }
    }

    /// Sends a command whose answer nobody waits for (from `Drop`, which cannot await).
    fn send_and_forget(&self, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = json!({"id": id, "method": method, "params": params});
        let _ = self.out.send(Message::text(message.to_string()));
    }

    /// Opens a page: a new window (so it is visible, and its timers are not throttled as a
    /// background tab's would be) in a new user context, `width` x `height` CSS pixels.
    /// `init_script` runs before any script of every document the page loads.
    pub async fn page(&self, name: &str, size: (u32, u32), init_script: Option<&str>) -> Page<'_> {
        let user_context = self
            .call("browser.createUserContext", json!({}))
            .await
            .unwrap_or_else(|e| panic!("[{name}] browser.createUserContext failed: {e}"))
            ["userContext"]
            .as_str()
            .unwrap()
            .to_string();
        self.open(user_context, true, name, size, init_script).await
    }

    /// Opens another window beside `page`, in its user context: the same cookies and
    /// storage, as a second tab of one user's browser (a window, visible like the first).
    /// Dropping it closes only its window. Otherwise as [`Firefox::page`].
    pub async fn tab(
        &self,
        page: &Page<'_>,
        name: &str,
        size: (u32, u32),
        init_script: Option<&str>,
    ) -> Page<'_> {
        self.open(page.user_context.clone(), false, name, size, init_script)
            .await
    }

    async fn open(
        &self,
        user_context: String,
        owns_context: bool,
        name: &str,
        (width, height): (u32, u32),
        init_script: Option<&str>,
    ) -> Page<'_> {
        let context = self
            .call(
                "browsingContext.create",
                json!({"type": "window", "userContext": user_context}),
            )
            .await
            .unwrap_or_else(|e| panic!("[{name}] browsingContext.create failed: {e}"))["context"]
            .as_str()
            .unwrap()
            .to_string();
        let page = Page {
            firefox: self,
            name: name.to_string(),
            user_context,
            owns_context,
            context,
        };
        page.call(
            "browsingContext.setViewport",
            json!({"context": page.context, "viewport": {"width": width, "height": height}}),
        )
        .await;
        if let Some(source) = init_script {
            // A preload script is a function; the source becomes its body.
            page.call(
                "script.addPreloadScript",
                json!({"functionDeclaration": format!("() => {{\n{source}\n}}"),
                       "contexts": [page.context]}),
            )
            .await;
        }
        page
    }
}

/// Says that `test` is skipped (or panics under CI) when Firefox is missing.
fn installed_or_skip(test: &str) -> Option<PathBuf> {
    let path = firefox_path();
    if path.is_none() {
        if under_ci() {
            panic!(
                "firefox-esr is not installed and CI=true: install it (apt-get install firefox-esr)"
            );
        }
        // Straight to the process's stderr: the test harness captures `eprintln!` of a
        // passing test, and this must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: firefox-esr not installed: browser test `{test}` did not run \
             (apt-get install firefox-esr, or set FIREFOX=/path/to/firefox) ***"
        );
    }
    path
}

/// Connects to Firefox's BiDi endpoint, hands back the sending side, then routes every
/// incoming message: answers to their callers, log entries to their page. Returns when the
/// connection ends.
async fn serve_connection(
    port: u16,
    pending: Pending,
    logs: Logs,
    connected: oneshot::Sender<Result<mpsc::UnboundedSender<Message>, String>>,
) {
    let url = format!("ws://127.0.0.1:{port}/session");
    let socket = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((socket, _)) => socket,
        Err(e) => {
            let _ = connected.send(Err(e.to_string()));
            return;
        }
    };
    let (mut sink, mut stream) = socket.split();
    let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
    let _ = connected.send(Ok(out));
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match value["type"].as_str() {
            Some("success") | Some("error") => {
                let Some(id) = value["id"].as_u64() else {
                    continue;
                };
                if let Some(reply) = pending.lock().unwrap().remove(&id) {
                    let result = if value["type"] == "success" {
                        Ok(value["result"].clone())
                    } else {
                        Err(json!({"error": value["error"], "message": value["message"]}))
                    };
                    let _ = reply.send(result);
                }
            }
            Some("event") if value["method"] == "log.entryAdded" => {
                let params = &value["params"];
                let Some(context) = params["source"]["context"].as_str() else {
                    continue;
                };
                let level = match params["level"].as_str().unwrap_or("info") {
                    "warn" => "warning",
                    other => other,
                };
                let entry = ConsoleEntry {
                    level: level.to_string(),
                    source: params["type"].as_str().unwrap_or("other").to_string(),
                    text: params["text"].as_str().unwrap_or("").to_string(),
                };
                logs.lock()
                    .unwrap()
                    .entry(context.to_string())
                    .or_default()
                    .push(entry);
            }
            _ => {}
        }
    }
    writer.abort();
    // Firefox went away: fail every outstanding call.
    for (_, reply) in pending.lock().unwrap().drain() {
        let _ = reply.send(Err(json!({"message": "firefox connection closed"})));
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        // Closing the keeper's stdin stops Firefox (see `launch`); give it a moment to exit
        // and clean up, then make sure the keeper itself is gone.
        drop(self.lifeline.take());
        if exited_within(&mut self.keeper, Duration::from_secs(5)) {
            return;
        }
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
    }
}

/// One page: a top-level browsing context (a window) in its own user context. Dropping it
/// closes the window and discards the user context, so a shared Firefox keeps no pages (and
/// no live chat connections) from earlier tests.
pub struct Page<'f> {
    firefox: &'f Firefox,
    /// A name for messages.
    pub name: String,
    user_context: String,
    /// Whether the user context is this page's own (else it is another page's, whose tab
    /// this is: see [`Firefox::tab`]).
    owns_context: bool,
    context: String,
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        if self.owns_context {
            self.firefox.send_and_forget(
                "browser.removeUserContext",
                json!({"userContext": self.user_context}),
            );
        } else {
            self.firefox
                .send_and_forget("browsingContext.close", json!({"context": self.context}));
        }
    }
}

impl Page<'_> {
    /// Calls a BiDi command; panics on error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.firefox
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("[{}] {method} failed: {e}", self.name))
    }

    /// Navigates and waits until the document has loaded (its `load` event).
    pub async fn goto(&self, url: &str) {
        self.call(
            "browsingContext.navigate",
            json!({"context": self.context, "url": url, "wait": "complete"}),
        )
        .await;
    }

    /// Focuses the element matching `selector` and types `text` into it key by key, as a
    /// user would (BiDi input actions: real key events, which the page's handlers see).
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.focus(selector).await;
        let keys: Vec<String> = text.chars().map(String::from).collect();
        self.keys(&keys).await;
    }

    /// Presses a key (`Enter`, `Tab`, `Escape`) in the focused element.
    pub async fn press(&self, key: &str) {
        // WebDriver's codes for the keys that are not characters.
        let code = match key {
            "Enter" => "\u{E007}",
            "Tab" => "\u{E004}",
            "Escape" => "\u{E00C}",
            "ArrowUp" => "\u{E013}",
            "ArrowDown" => "\u{E015}",
            other => panic!("no WebDriver code for key {other}"),
        };
        self.keys(&[code.to_string()]).await;
    }

    /// Types `text` into `selector` and presses Enter.
    pub async fn type_and_enter(&self, selector: &str, text: &str) {
        self.type_into(selector, text).await;
        self.press("Enter").await;
    }

    async fn keys(&self, keys: &[String]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.call(
            "input.performActions",
            json!({"context": self.context,
                   "actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }
}

impl Drive for Page<'_> {
    fn label(&self) -> String {
        self.name.clone()
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value as JSON.
    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let result = self
            .firefox
            .call(
                "script.evaluate",
                json!({
                    "expression": expression,
                    "target": {"context": self.context},
                    "awaitPromise": true,
                    "resultOwnership": "none",
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        match result["type"].as_str() {
            Some("success") => Ok(from_remote(&result["result"])),
            _ => {
                let details = &result["exceptionDetails"];
                Err(details["text"].as_str().unwrap_or("exception").to_string())
            }
        }
    }
    /// Everything this page wrote to its console so far.
    fn console(&self) -> Vec<ConsoleEntry> {
        self.firefox
            .logs
            .lock()
            .unwrap()
            .get(&self.context)
            .cloned()
            .unwrap_or_default()
    }
}

/// A BiDi remote value as JSON. Values JSON has no place for become what `JSON.stringify`
/// would make of them (NaN: null), or, for DOM nodes, windows, functions and the like, an
/// object naming their type (truthy, as the value itself is in JavaScript).
fn from_remote(value: &Value) -> Value {
    let inner = &value["value"];
    match value["type"].as_str().unwrap_or("undefined") {
        "undefined" | "null" => Value::Null,
        "string" | "boolean" | "date" | "bigint" => inner.clone(),
        "number" => match inner {
            Value::Number(_) => inner.clone(),
            Value::String(s) if s == "-0" => json!(0),
            _ => Value::Null, // NaN, Infinity, -Infinity
        },
        "array" | "set" => Value::Array(
            inner
                .as_array()
                .map(|items| items.iter().map(from_remote).collect())
                .unwrap_or_default(),
        ),
        "object" | "map" => {
            let mut object = Map::new();
            for pair in inner.as_array().into_iter().flatten() {
                let key = match &pair[0] {
                    Value::String(key) => key.clone(),
                    other => match from_remote(other) {
                        Value::String(key) => key,
                        key => key.to_string(),
                    },
                };
                object.insert(key, from_remote(&pair[1]));
            }
            Value::Object(object)
        }
        other => json!({"type": other}),
    }
}

#[test]
fn remote_values_become_json() {
    let remote = json!({"type": "object", "value": [
        ["n", {"type": "number", "value": 3}],
        ["nan", {"type": "number", "value": "NaN"}],
        ["s", {"type": "string", "value": "hi"}],
        ["u", {"type": "undefined"}],
        ["list", {"type": "array", "value": [{"type": "boolean", "value": true}, {"type": "null"}]}],
        ["node", {"type": "node", "sharedId": "x", "value": {"nodeType": 1}}],
    ]});
    assert_eq!(
        from_remote(&remote),
        json!({"n": 3, "nan": null, "s": "hi", "u": null, "list": [true, null], "node": {"type": "node"}})
    );
}
