//! A small Chrome DevTools Protocol client that drives Debian's Chromium for the browser
//! tests: launch a headless browser with a fresh profile, open pages in isolated browser
//! contexts, evaluate JavaScript, type like a user, wait for conditions with a deadline,
//! collect console errors, and take screenshots. No browser is downloaded: without
//! Chromium the tests say loudly that they were skipped (and fail under `CI=true`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::Message;

/// How long any awaited browser condition may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// Where Chromium is: `$CHROMIUM` when set (only there), else Debian's binary or wrapper.
fn chromium_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.is_file())
}

/// Whether the tests run under CI, where a missing browser is a failure.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;
type Logs = Arc<Mutex<HashMap<String, Vec<ConsoleEntry>>>>;

/// One console line, exception or log entry a page produced.
#[derive(Debug, Clone)]
pub struct ConsoleEntry {
    /// `error`, `warning`, `info`, ...
    pub level: String,
    /// Where it came from: `console`, `exception`, or a `Log` source like `network`.
    pub source: String,
    pub text: String,
}

/// What a test does with a page, whichever browser drives it (the DevTools protocol for
/// Chromium here, WebDriver BiDi for Firefox in `firefox.rs`): only evaluating and reading
/// the console differ; waiting and checking are the same code for both.
#[allow(async_fn_in_trait)] // the tests' own trait: no caller needs its futures to be Send
pub trait Drive {
    /// A name for messages.
    fn label(&self) -> String;

    /// Evaluates `expression` (awaiting a promise); its value as JSON, or what it threw.
    async fn try_eval(&self, expression: &str) -> Result<Value, String>;

    /// Everything this page wrote to its console so far.
    fn console(&self) -> Vec<ConsoleEntry>;

    /// Evaluates `expression`; panics if it throws.
    async fn eval(&self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|e| panic!("[{}] `{expression}` threw: {e}", self.label()))
    }

    /// Polls `expression` until it is truthy (not null, false, 0 or ""); returns its value.
    /// Panics after [`WAIT`] with `what`, the last value and the page's console.
    async fn wait_for(&self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            // A navigation in progress makes evaluation fail; that just means "not yet".
            let last = match self.try_eval(expression).await {
                Ok(value) if truthy(&value) => return value,
                other => other,
            };
            if Instant::now() > deadline {
                panic!(
                    "[{}] timed out waiting for {what}\n  condition: {expression}\n  last: {last:?}\n  console: {:#?}",
                    self.label(),
                    self.console()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Focuses the element matching `selector`; panics if there is none or it cannot take
    /// the focus.
    async fn focus(&self, selector: &str) {
        let focused = self
            .eval(&format!(
                "(() => {{ const el = document.querySelector({sel}); if (!el) return false; el.focus(); return document.activeElement === el; }})()",
                sel = json!(selector)
            ))
            .await;
        assert_eq!(
            focused,
            json!(true),
            "[{}] cannot focus {selector}",
            self.label()
        );
    }

    /// The page's console errors (console.error, uncaught exceptions, errors the engine
    /// reports about the page).
    fn console_errors(&self) -> Vec<ConsoleEntry> {
        self.console()
            .into_iter()
            .filter(|e| e.level == "error")
            .collect()
    }

    /// Panics, listing them, if the page logged any error.
    fn assert_no_console_errors(&self) {
        let errors: Vec<(String, String)> = self
            .console_errors()
            .into_iter()
            .map(|e| (e.source, e.text))
            .collect();
        assert!(
            errors.is_empty(),
            "[{}] console errors: {errors:#?}",
            self.label()
        );
    }
}

/// What a test reads off the demo page (`lib/client/index.html`), in any browser.
#[allow(async_fn_in_trait)] // the tests' own trait: no caller needs its futures to be Send
pub trait DemoPage: Drive {
    /// Waits until the page says it is connected over `transport` (badge and status), and
    /// checks the client agrees; returns how long its first connection took (config,
    /// transport, join), in ms.
    async fn wait_connected(&self, transport: &str) -> f64 {
        self.wait_for(
            &format!("connected over {transport}"),
            &demo_connected(transport),
        )
        .await;
        assert_eq!(
            self.eval("window.chat.transport").await,
            transport,
            "[{}]",
            self.label()
        );
        self.eval(DEMO_CONNECT_TIME)
            .await
            .as_f64()
            .expect("the demo page marks its connection")
    }

    /// Waits until a page that was on WebTransport is connected again (after its server
    /// restarted, say) and returns the transport. That is WebTransport, unless WebSocket
    /// won the race: on a loaded machine a WebTransport handshake can outlast its 500 ms
    /// head start. WebSocket passes only when the page tried WebTransport since
    /// [`WATCH_WEBTRANSPORT`] last ran and every such session connected or was given up by
    /// the client, none failed: a WebTransport that cannot reconnect fails the test.
    async fn wait_back_over_webtransport(&self) -> String {
        let transport = self
            .wait_for(
                "connected again",
                "document.querySelector('[data-testid=status]').dataset.status === 'connected'
                    && window.chat.transport",
            )
            .await;
        let transport = transport.as_str().unwrap_or_default().to_string();
        if transport != "webtransport" {
            let outcomes = self.eval("window.__webTransports").await;
            let lost_the_race = outcomes.as_array().is_some_and(|all| {
                !all.is_empty() && all.iter().all(|o| o == "ready" || o == "given up")
            });
            assert!(
                transport == "websocket" && lost_the_race,
                "[{}] back over {transport}, its WebTransport sessions: {outcomes}",
                self.label()
            );
            eprintln!(
                "[{}] back over WebSocket: it won the race (WebTransport sessions: {outcomes})",
                self.label()
            );
        }
        self.wait_for(
            &format!("connected again over {transport}"),
            &demo_connected(&transport),
        )
        .await;
        transport
    }

    /// Drops the demo page's connection from the page's side, as a lost network does, and
    /// waits until the page says it is reconnecting.
    async fn lose_connection(&self) {
        self.eval(
            "(window.__dropped = false,
              window.chat.on('status', (e) => { window.__dropped ||= e.status === 'reconnecting'; }),
              window.chat._link._conn.close())",
        )
        .await;
        self.wait_for("the page to notice", "window.__dropped")
            .await;
    }

    /// The page's message list once it has at least `n` messages, as (seq, from, text).
    async fn messages(&self, n: usize) -> Vec<(u64, String, String)> {
        self.wait_for(
            &format!("{n} messages in the list"),
            &format!("document.querySelectorAll('[data-testid=message]').length >= {n}"),
        )
        .await;
        let value = self.eval(DEMO_MESSAGES).await;
        serde_json::from_value(value).expect("[seq, from, text] per message")
    }

    /// Waits until the member list shows exactly `names`.
    async fn wait_members(&self, names: &[&str]) {
        // Sorted as JavaScript sorts (UTF-16 code units; the same as bytes for ASCII names).
        let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        names.sort();
        let want = serde_json::to_string(&names).unwrap();
        self.wait_for(
            &format!("members {want}"),
            &format!("JSON.stringify({DEMO_MEMBERS}) === {}", json!(want)),
        )
        .await;
    }
}

impl<T: Drive> DemoPage for T {}

/// `(from, text)` pairs as a room shows them from its first message: numbered 1, 2, …
pub fn numbered(list: &[(&str, &str)]) -> Vec<(u64, String, String)> {
    list.iter()
        .enumerate()
        .map(|(i, (from, text))| (i as u64 + 1, from.to_string(), text.to_string()))
        .collect()
}

/// Waits until the page's `expression` is `want` (as JSON values: objects equal whatever
/// the order of their keys). Panics after [`WAIT`] with the last value and the console.
pub async fn wait_json(page: &impl Drive, what: &str, expression: &str, want: Value) {
    wait_json_telling(page, what, expression, want, "null").await
}

/// [`wait_json`], whose panic also shows the value of `context` (what explains the page's
/// state, such as a log the test keeps in it).
pub async fn wait_json_telling(
    page: &impl Drive,
    what: &str,
    expression: &str,
    want: Value,
    context: &str,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = page.try_eval(expression).await;
        if last.as_ref() == Ok(&want) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "[{}] timed out waiting for {what}: {want}\n  expression: {expression}\n  last: {last:?}\n  {context}: {:?}\n  console: {:#?}",
                page.label(),
                page.try_eval(context).await,
                page.console()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// After the room's `earlier` messages, each of `senders` sent its `burst` message at
/// once, one from each page: the server decides their order, and every page shows that
/// same order with the same sequence numbers, each message once, none left pending.
/// Returns what they show.
pub async fn assert_one_order(
    pages: &[impl DemoPage],
    earlier: &[(u64, String, String)],
    senders: &[&str],
    burst: &[String],
) -> Vec<(u64, String, String)> {
    let total = earlier.len() + burst.len();
    let seen = pages[0].messages(total).await;
    for page in &pages[1..] {
        assert_eq!(
            page.messages(total).await,
            seen,
            "[{}] differs from [{}]",
            page.label(),
            pages[0].label()
        );
    }
    assert_eq!(seen[..earlier.len()], earlier[..]);
    let seqs: Vec<u64> = seen.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    let mut tail: Vec<(String, String)> = seen[earlier.len()..]
        .iter()
        .map(|(_, from, text)| (from.clone(), text.clone()))
        .collect();
    tail.sort();
    let mut sent: Vec<(String, String)> = senders
        .iter()
        .zip(burst)
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    sent.sort();
    assert_eq!(tail, sent, "each burst message once, from its sender");
    for page in pages {
        assert_eq!(
            page.eval("document.querySelectorAll('[data-testid=pending-message]').length")
                .await,
            0,
            "[{}] still has pending messages",
            page.label()
        );
    }
    seen
}

/// Run before a page's own scripts, each leaves it fewer transports: no WebTransport (UDP
/// blocked), so WebSocket; no WebSocket either (upgrades broken by a proxy), so SSE; and no
/// EventSource either, so long polling.
pub const NO_WEBTRANSPORT: &str = "delete window.WebTransport;";
pub const NO_STREAMS: &str = "delete window.WebTransport; delete window.WebSocket;";
pub const NO_EVENT_SOURCE: &str =
    "delete window.WebTransport; delete window.WebSocket; delete window.EventSource;";

/// Every transport, with the script above that makes a page land on it.
pub const EVERY_TRANSPORT: [(Option<&str>, &str); 4] = [
    (None, "webtransport"),
    (Some(NO_WEBTRANSPORT), "websocket"),
    (Some(NO_STREAMS), "sse"),
    (Some(NO_EVENT_SOURCE), "longpoll"),
];

/// Run in a page of a site: imports the client from the chat server at `chat`, connects to
/// `lobby` over `transport` (under whatever login the host's auth gives it), sends
/// "over <transport>" and closes; `[transport, name, seq]`, or `[code, message]` of the
/// `ChatError` it threw.
pub fn connect_and_send(chat: &str, transport: &str) -> String {
    format!(
        r#"(async () => {{
            const {{ connect }} = await import("{chat}/wtchat/wtchat.js");
            try {{
                const chat = await connect({{ server: "{chat}", room: "lobby",
                                              name: "whoever", transport: "{transport}" }});
                const ack = await chat.send("over " + chat.transport);
                const got = [chat.transport, chat.me.name, ack.seq];
                chat.close();
                return got;
            }} catch (e) {{
                return [e.code, e.message];
            }}
        }})()"#
    )
}

/// Run in a page (before it joins, to see its first session): wraps `WebTransport` to
/// record how each session the client opens ends in `__webTransports`: `ready`,
/// `failed: <why>`, or `given up` when the client closed it while it was still connecting
/// (another transport won the race). Run again, it only empties the record.
pub const WATCH_WEBTRANSPORT: &str = "(() => {
  if (window.__webTransports) return void (window.__webTransports.length = 0);
  const Real = window.WebTransport;
  const outcomes = (window.__webTransports = []);
  // WebKit rejects a failed session's `ready` with no reason at all.
  const text = (e) => (e === undefined ? 'no reason given' : e instanceof Error ? `${e.name}: ${e.message}` : String(e));
  window.WebTransport = function WebTransport(url, options) {
    const at = outcomes.push('pending') - 1;
    const settle = (outcome) => { if (outcomes[at] === 'pending') outcomes[at] = outcome; };
    let session;
    try {
      session = new Real(url, options);
    } catch (e) {
      settle(`failed at once: ${text(e)}`);
      throw e;
    }
    const close = session.close.bind(session);
    session.close = (info) => { settle('given up'); return close(info); };
    session.ready.then(() => settle('ready'), (e) => settle(`failed: ${text(e)}`));
    return session;
  };
  window.WebTransport.prototype = Real.prototype;
})()";

/// The names in the demo page's member list, sorted.
pub const DEMO_MEMBERS: &str = "[...document.querySelectorAll('[data-testid=member] .name')]
    .map(n => n.textContent).sort()";

/// How long the demo page took from starting to join to connected (config, transport,
/// join), ms.
pub const DEMO_CONNECT_TIME: &str = "performance.getEntriesByName('wtchat:connected')[0].startTime
    - performance.getEntriesByName('wtchat:connect')[0].startTime";

/// The demo page's messages: `[seq, from, text]` each.
pub const DEMO_MESSAGES: &str =
    "[...document.querySelectorAll('[data-testid=message]')].map(li => [
    Number(li.dataset.seq),
    li.querySelector('[data-testid=message-from]').textContent,
    li.querySelector('[data-testid=message-text]').textContent])";

/// The demo page says it is connected over `transport`: status and badge both.
pub fn demo_connected(transport: &str) -> String {
    let label = match transport {
        "webtransport" => "WebTransport",
        "sse" => "SSE",
        "longpoll" => "Long polling",
        _ => "WebSocket",
    };
    format!(
        "(() => {{ const b = document.querySelector('[data-testid=transport-badge]');
                  const s = document.querySelector('[data-testid=status]');
                  return s.dataset.status === 'connected' && b.dataset.transport === '{transport}'
                      && b.textContent.trim() === '{label}' && s.textContent.trim() === 'Connected'; }})()"
    )
}

impl Drive for Page<'_> {
    fn label(&self) -> String {
        self.name.clone()
    }

    /// Evaluates `expression` (awaiting a promise) and returns its value as JSON.
    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let result = self
            .browser
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await
            .map_err(|e| e.to_string())?;
        if let Some(details) = result.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("exception");
            return Err(text.to_string());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Everything this page wrote to its console so far.
    fn console(&self) -> Vec<ConsoleEntry> {
        self.browser
            .logs
            .lock()
            .unwrap()
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }
}

/// A headless Chromium and a DevTools connection to it. Killed on drop.
pub struct Browser {
    child: Child,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    logs: Logs,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Launches Chromium, or returns None (after saying so loudly) when it is not installed.
    /// Under `CI=true` a missing browser panics instead.
    pub async fn launch_or_skip(test: &str) -> Option<Browser> {
        let Some(path) = chromium_path() else {
            if under_ci() {
                panic!(
                    "chromium is not installed and CI=true: install it (apt-get install chromium)"
                );
            }
            // Straight to the process's stderr: the test harness captures `eprintln!` of a
            // passing test, and this must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: chromium not installed: browser test `{test}` did not run \
                 (apt-get install chromium, or set CHROMIUM=/path/to/chromium) ***"
            );
            return None;
        };
        Some(Browser::launch(&path).await)
    }

    async fn launch(path: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--mute-audio",
                "--password-store=basic",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let mut child = KillOnDrop(Some(child));

        // Chromium writes its DevTools port and path here once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let started = Instant::now();
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if let Some(status) = child.0.as_mut().unwrap().try_wait().unwrap() {
                panic!("chromium exited at start: {status}");
            }
            assert!(
                started.elapsed() < WAIT,
                "chromium did not open its DevTools port in time"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to chromium's DevTools socket");
        let (mut sink, mut stream) = socket.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let logs: Logs = Arc::default();
        let (pending2, logs2) = (pending.clone(), logs.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = value["id"].as_u64() {
                    if let Some(reply) = pending2.lock().unwrap().remove(&id) {
                        let result = match value.get("error") {
                            Some(error) => Err(error.clone()),
                            None => Ok(value["result"].clone()),
                        };
                        let _ = reply.send(result);
                    }
                } else if let (Some(method), Some(session)) =
                    (value["method"].as_str(), value["sessionId"].as_str())
                    && let Some(entry) = console_entry(method, &value["params"])
                {
                    logs2
                        .lock()
                        .unwrap()
                        .entry(session.to_string())
                        .or_default()
                        .push(entry);
                }
            }
            // The browser went away: fail every outstanding call.
            for (_, reply) in pending2.lock().unwrap().drain() {
                let _ = reply.send(Err(json!({"message": "browser connection closed"})));
            }
        });
        Browser {
            child: child.0.take().unwrap(),
            out,
            pending,
            logs,
            next_id: AtomicU64::new(1),
            _profile: profile,
        }
    }

    /// Calls a DevTools method (on a page when `session` is given).
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, reply);
        self.out
            .send(Message::text(message.to_string()))
            .map_err(|_| json!({"message": "browser connection closed"}))?;
        match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(json!({"message": "browser connection closed"})),
            Err(_) => Err(json!({"message": format!("{method} timed out")})),
        }
    }

    /// Opens a page in a fresh, isolated browser context (its own cookies, storage, cache),
    /// `width` x `height` CSS pixels. `init_script` runs before any script of every document.
    pub async fn page(
        &self,
        name: &str,
        width: u32,
        height: u32,
        init_script: Option<&str>,
    ) -> Page<'_> {
        let context = self
            .call(
                None,
                "Target.createBrowserContext",
                json!({"disposeOnDetach": true}),
            )
            .await
            .expect("createBrowserContext");
        let context = context["browserContextId"].as_str().unwrap().to_string();
        self.open(context, name, width, height, init_script).await
    }

    /// Opens another tab beside `page`, in its browser context: the same cookies and
    /// storage, as a second tab of one user's browser. Otherwise as [`Browser::page`].
    pub async fn tab(
        &self,
        page: &Page<'_>,
        name: &str,
        width: u32,
        height: u32,
        init_script: Option<&str>,
    ) -> Page<'_> {
        self.open(page.context.clone(), name, width, height, init_script)
            .await
    }

    /// Opens a page in browser context `context`.
    async fn open(
        &self,
        context: String,
        name: &str,
        width: u32,
        height: u32,
        init_script: Option<&str>,
    ) -> Page<'_> {
        let target = self
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank", "browserContextId": context, "width": width, "height": height, "newWindow": true}),
            )
            .await
            .expect("createTarget");
        let target = target["targetId"].as_str().unwrap().to_string();
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await
            .expect("attachToTarget");
        let session = session["sessionId"].as_str().unwrap().to_string();
        let page = Page {
            browser: self,
            name: name.to_string(),
            session,
            context,
        };
        for method in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(method, json!({})).await;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
        // Every page behaves as the focused one, so typing works in several at once.
        page.call(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        )
        .await;
        if let Some(source) = init_script {
            page.call(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({"source": source}),
            )
            .await;
        }
        page
    }
}

/// Kills a half-started browser if launching panics.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a DevTools event says about the console, if it is a console event.
fn console_entry(method: &str, params: &Value) -> Option<ConsoleEntry> {
    match method {
        "Runtime.consoleAPICalled" => {
            let text = params["args"]
                .as_array()
                .map(|args| {
                    args.iter()
                        .map(|a| {
                            a["value"]
                                .as_str()
                                .map(str::to_string)
                                .or_else(|| a["description"].as_str().map(str::to_string))
                                .unwrap_or_else(|| a["value"].to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let level = match params["type"].as_str().unwrap_or("log") {
                "error" | "assert" => "error",
                "warning" => "warning",
                other => other,
            };
            Some(ConsoleEntry {
                level: level.to_string(),
                source: "console".into(),
                text,
            })
        }
        "Runtime.exceptionThrown" => {
            let details = &params["exceptionDetails"];
            let text = details["exception"]["description"]
                .as_str()
                .or(details["text"].as_str())
                .unwrap_or("exception")
                .to_string();
            Some(ConsoleEntry {
                level: "error".into(),
                source: "exception".into(),
                text,
            })
        }
        "Log.entryAdded" => {
            let entry = &params["entry"];
            Some(ConsoleEntry {
                level: entry["level"].as_str().unwrap_or("info").to_string(),
                source: entry["source"].as_str().unwrap_or("other").to_string(),
                text: format!(
                    "{} {}",
                    entry["text"].as_str().unwrap_or(""),
                    entry["url"].as_str().unwrap_or("")
                ),
            })
        }
        _ => None,
    }
}

/// One page (a tab in its own browser context).
pub struct Page<'b> {
    browser: &'b Browser,
    /// A name for messages and screenshot files.
    pub name: String,
    session: String,
    /// Its browser context (shared by the tabs [`Browser::tab`] opens beside it).
    context: String,
}

impl Page<'_> {
    /// Calls a DevTools method on this page; panics on error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.browser
            .call(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("[{}] {method} failed: {e}", self.name))
    }

    /// Navigates and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        assert!(
            nav.get("errorText").is_none(),
            "[{}] navigation to {url} failed: {nav}",
            self.name
        );
        self.wait_for(
            "the page to load",
            "document.readyState === 'complete' && location.href !== 'about:blank'",
        )
        .await;
    }

    /// Focuses the element matching `selector` and types `text` into it, as a user would.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.focus(selector).await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Presses a key (`Enter`, `Tab`, ...) in the focused element.
    pub async fn press(&self, key: &str) {
        let (code, text) = match key {
            "Enter" => (13, "\r"),
            "Tab" => (9, ""),
            "Escape" => (27, ""),
            "ArrowUp" => (38, ""),
            "ArrowDown" => (40, ""),
            _ => (0, ""),
        };
        let mut down =
            json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code});
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down).await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await;
    }

    /// Types `text` into `selector` and presses Enter.
    pub async fn type_and_enter(&self, selector: &str, text: &str) {
        self.type_into(selector, text).await;
        self.press("Enter").await;
    }

    /// Clicks the middle of the element matching `selector` with the mouse, as a user does
    /// (scrolled into view first).
    pub async fn click(&self, selector: &str) {
        let middle = self
            .eval(&format!(
                "(() => {{ const el = document.querySelector({sel});
                          el.scrollIntoView({{ block: 'center' }});
                          const r = el.getBoundingClientRect();
                          return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                sel = json!(selector)
            ))
            .await;
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": middle[0], "y": middle[1], "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Turns the mouse wheel over the middle of the element matching `selector`, as a user
    /// scrolls it: `delta_y` CSS pixels, negative upwards.
    pub async fn wheel(&self, selector: &str, delta_y: f64) {
        let middle = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({sel}).getBoundingClientRect();
                          return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                sel = json!(selector)
            ))
            .await;
        self.call(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseWheel", "x": middle[0], "y": middle[1], "deltaX": 0, "deltaY": delta_y}),
        )
        .await;
    }

    /// Writes a PNG screenshot to `target/screenshots/<file>.png`; returns its path.
    pub async fn screenshot(&self, file: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": false}),
            )
            .await;
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        save_screenshot(file, &png)
    }

    /// Renders the page as for a user who prefers a dark color scheme.
    pub async fn dark_mode(&self) {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await;
    }

    /// Sets the viewport size (for a second screenshot at another width).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `target/screenshots`, beside the build's own directories.
pub fn screenshot_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("screenshots")
}

/// Writes `png` to `target/screenshots/<file>.png` for a developer to look at; its path.
pub fn save_screenshot(file: &str, png: &[u8]) -> PathBuf {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{file}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    path
}

/// Waits up to `limit` for `child` to exit by itself (a driver's keeper, told to stop by
/// closing its stdin); whether it did.
pub fn exited_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Standard base64 (what DevTools uses for screenshots) to bytes.
pub fn base64_decode(text: &str) -> Vec<u8> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8hIQ=="), b"hello!!");
    assert_eq!(base64_decode("AAEC/w=="), [0, 1, 2, 255]);
}
