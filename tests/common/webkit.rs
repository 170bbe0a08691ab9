//! A small W3C WebDriver (classic, JSON over HTTP) client that drives Debian's WebKitGTK for
//! the browser tests: the engine family of Safari, and a real browser without WebTransport.
//! It owns, per page, one `WebKitWebDriver` started under `xvfb-run -a` on a free port (its
//! own X display, since MiniBrowser is not headless), the one MiniBrowser session that
//! driver allows, and the page errors collected from it. Nothing is downloaded: without
//! `WebKitWebDriver`, MiniBrowser or `xvfb-run` the tests say loudly that they were skipped
//! (and fail under `CI=true`).
//!
//! Classic WebDriver has no browser contexts, and WebKitWebDriver serves one session at a
//! time, so every [`Page`] is a driver, a display and a MiniBrowser of its own: a fresh
//! profile, nothing shared with any other page. Starting one takes about half a second.
//!
//! Classic WebDriver gives no console log either. Right after each navigation, [`Page::goto`]
//! installs a script that records the page's errors (window `error` events, including
//! resources that fail to load, unhandled promise rejections, and `console.error` calls) in
//! a page array; every evaluation hands them over, and [`Drive::console`] returns them.
//! Errors thrown before that script runs — while the document loads, before the `load`
//! event the navigation command waits for — are not seen.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{
    ConsoleEntry, Drive, WAIT, base64_decode, exited_within, save_screenshot, under_ci,
};
use crate::common::free_port;

/// Debian's WebDriver for WebKitGTK (package `webkit2gtk-driver`).
const DRIVER: &str = "/usr/bin/WebKitWebDriver";
/// The browser it drives: WebKitGTK's own small browser, shipped with the engine.
const MINIBROWSER: &str = "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser";

/// How long the driver may take to run a script: less than the HTTP client's own deadline
/// (`common::DEADLINE`), so a script that never calls back is reported as the driver's
/// `script timeout`, not as a hung connection.
const SCRIPT_TIMEOUT_MS: u64 = 8_000;

/// WebDriver's name for an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether everything a WebKitGTK page needs is installed; says loudly that `test` is
/// skipped when not (and panics under `CI=true`).
pub fn installed_or_skip(test: &str) -> bool {
    let missing: Vec<&str> = [
        (DRIVER, Path::new(DRIVER).is_file()),
        (MINIBROWSER, Path::new(MINIBROWSER).is_file()),
        ("xvfb-run", on_path("xvfb-run")),
    ]
    .into_iter()
    .filter(|(_, found)| !found)
    .map(|(what, _)| what)
    .collect();
    if missing.is_empty() {
        return true;
    }
    if under_ci() {
        panic!(
            "{} not installed and CI=true: install them (apt-get install webkit2gtk-driver xvfb)",
            missing.join(", ")
        );
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of a passing
    // test, and this must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {} not installed: WebKitGTK test `{test}` did not run \
         (apt-get install webkit2gtk-driver xvfb) ***",
        missing.join(", ")
    );
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Run in the page after each navigation: keeps the page's errors in `__wtchatPageErrors`
/// until an evaluation takes them. Capturing on `window` also sees resources that fail to
/// load (their `error` events do not bubble).
const COLLECT_ERRORS: &str = r#"
if (!window.__wtchatPageErrors) {
  const errors = (window.__wtchatPageErrors = []);
  const text = (x) => (x instanceof Error ? `${x.name}: ${x.message}` : String(x));
  window.addEventListener("error", (e) => {
    const what = e.target && e.target !== window ? e.target.src || e.target.href : null;
    errors.push({ source: "exception", text: what ? `failed to load ${what}` : e.message || text(e.error) });
  }, true);
  window.addEventListener("unhandledrejection", (e) =>
    errors.push({ source: "exception", text: `unhandled rejection: ${text(e.reason)}` }));
  const original = console.error;
  console.error = function (...args) {
    errors.push({ source: "console", text: args.map(text).join(" ") });
    return original.apply(this, args);
  };
}
"#;

/// One WebKitGTK page: a MiniBrowser with a fresh profile, its WebDriver session, and the
/// driver and X display it runs on. Dropping it stops all of them.
pub struct Page {
    /// A name for messages and screenshot files.
    pub name: String,
    /// WebKitGTK's version, as the driver reports it.
    pub version: String,
    /// `sh`, which runs xvfb-run and the driver and stops them once this end of its stdin
    /// closes (see [`Page::open`]).
    keeper: Child,
    /// Closing it is what stops the driver, its browser and its display.
    lifeline: Option<ChildStdin>,
    /// The keeper's directory: the driver's pid and its log. The keeper deletes it.
    dir: PathBuf,
    driver: SocketAddr,
    session: String,
    /// The page errors evaluations handed over so far.
    errors: Mutex<Vec<ConsoleEntry>>,
}

impl Page {
    /// Opens a WebKitGTK page, `width` x `height` window pixels, MiniBrowser started with
    /// `features` (`+WebTransport`, say); or returns None (after saying so loudly) when
    /// WebKitGTK is not installed. Under `CI=true` a missing piece panics instead.
    pub async fn open_or_skip(
        test: &str,
        name: &str,
        size: (u32, u32),
        features: &[&str],
    ) -> Option<Page> {
        if !installed_or_skip(test) {
            return None;
        }
        Some(Page::open(name, size, features).await)
    }

    /// Opens a WebKitGTK page (see [`Page::open_or_skip`]); WebKitGTK must be installed.
    pub async fn open(name: &str, (width, height): (u32, u32), features: &[&str]) -> Page {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("wtchat-webkit-")
            .tempdir()
            .unwrap()
            .keep();
        let port = free_port();
        // `sh` holds the driver's lifetime, as for Firefox (common/firefox.rs): it starts
        // xvfb-run in the background, then blocks reading its stdin, a pipe whose only writer
        // is this process. When that pipe closes — on drop, or because the test process
        // exited or crashed — `read` returns and the shell stops the driver; xvfb-run then
        // stops Xvfb and removes its own files, as it does when its command ends. Last, it
        // sends TERM to its whole process group (its own, see `process_group(0)`: xvfb-run,
        // Xvfb, the driver, MiniBrowser and WebKit's helper processes), which ends whatever
        // did not go by itself, and deletes its directory. It catches that TERM itself
        // (`trap`), set only after the children started so that they keep the default.
        let mut keeper = Command::new("sh")
            .args([
                "-c",
                r#"dir=$1; shift
                   xvfb-run -a -s "-screen 0 1920x1080x24" \
                     sh -c 'echo $$ > "$0/driver.pid"; exec "$@"' "$dir" "$@" \
                     >>"$dir/log" 2>&1 &
                   run=$!
                   trap : TERM
                   exec 2>/dev/null
                   read -r _
                   [ -s "$dir/driver.pid" ] && kill "$(cat "$dir/driver.pid")"
                   wait "$run"
                   kill -TERM 0
                   rm -rf "$dir""#,
                "webkit-keeper",
            ])
            .arg(&dir)
            .arg(DRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start xvfb-run {DRIVER}: {e}"));
        let lifeline = keeper.stdin.take();
        let mut page = Page {
            name: name.to_string(),
            version: String::new(),
            keeper,
            lifeline,
            dir,
            driver: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            errors: Mutex::default(),
        };

        // The driver answers `GET /status` once it listens.
        loop {
            if tokio::net::TcpStream::connect(page.driver).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = page.keeper.try_wait() {
                panic!(
                    "[{name}] xvfb-run or WebKitWebDriver exited at start: {status}{}",
                    page.log()
                );
            }
            if started.elapsed() > WAIT {
                panic!(
                    "[{name}] WebKitWebDriver did not listen within {WAIT:?}{}",
                    page.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut args = vec!["--automation".to_string()];
        args.extend(features.iter().map(|f| format!("--features={f}")));
        let session = page
            .request(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "webkitgtk:browserOptions": {"binary": MINIBROWSER, "args": args},
                }}}),
            )
            .await
            .unwrap_or_else(|e| panic!("[{name}] new session failed: {e}{}", page.log()));
        page.session = session["sessionId"].as_str().unwrap().to_string();
        page.version = session["capabilities"]["browserVersion"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        page.call("POST", "/timeouts", json!({"script": SCRIPT_TIMEOUT_MS}))
            .await;
        page.resize(width, height).await;
        eprintln!(
            "[{name}] WebKitGTK {} ready in {:?}",
            page.version,
            started.elapsed()
        );
        page
    }

    /// The driver's and Xvfb's output so far, for failure messages.
    fn log(&self) -> String {
        match std::fs::read_to_string(self.dir.join("log")) {
            Ok(log) if !log.trim().is_empty() => format!("\n  their output:\n{log}"),
            _ => String::new(),
        }
    }

    /// One WebDriver request: the answer's `value`, or the driver's error as text.
    async fn request(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let body = (method == "POST").then_some(&body);
        let (status, text) =
            crate::common::http_request(self.driver, method, path, &[], body).await;
        let value = serde_json::from_str::<Value>(&text)
            .map(|mut answer| answer["value"].take())
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {text}"))?;
        if status == 200 {
            Ok(value)
        } else {
            Err(format!(
                "{}: {}",
                value["error"].as_str().unwrap_or("error"),
                value["message"].as_str().unwrap_or("")
            ))
        }
    }

    /// A command of this page's session (`path` after `/session/{id}`).
    pub async fn command(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body).await
    }

    /// A command of this page's session; panics on error.
    pub async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.command(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("[{}] {method} {path} failed: {e}", self.name))
    }

    /// Navigates, waits until the document has loaded (the driver waits for its `load`
    /// event), and installs the error collector in it.
    pub async fn goto(&self, url: &str) {
        // What the page being left still holds would be lost with it.
        let _ = self.try_eval("null").await;
        self.call("POST", "/url", json!({"url": url})).await;
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": COLLECT_ERRORS, "args": []}),
        )
        .await;
    }

    /// Sets the window's size (the viewport is the window less MiniBrowser's toolbar, and
    /// no narrower than the toolbar needs: 447 pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// The element matching `selector`, as a WebDriver element id.
    async fn element(&self, selector: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": selector}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    /// Types `text` into the element matching `selector` key by key, as a user would
    /// (WebDriver's Element Send Keys focuses it first; the page's handlers see real key
    /// and input events).
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.element(selector).await;
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Empties the input matching `selector` (WebDriver's Element Clear).
    pub async fn clear(&self, selector: &str) {
        let element = self.element(selector).await;
        self.call("POST", &format!("/element/{element}/clear"), json!({}))
            .await;
    }

    /// Presses a key (`Enter`, `Tab`, `Escape`) in the focused element.
    pub async fn press(&self, key: &str) {
        // WebDriver's codes for the keys that are not characters.
        let code = match key {
            "Enter" => "\u{E007}",
            "Tab" => "\u{E004}",
            "Escape" => "\u{E00C}",
            other => panic!("no WebDriver code for key {other}"),
        };
        let active = self.call("GET", "/element/active", json!({})).await;
        let element = active[ELEMENT].as_str().unwrap();
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            json!({"text": code}),
        )
        .await;
    }

    /// Types `text` into `selector` and presses Enter.
    pub async fn type_and_enter(&self, selector: &str, text: &str) {
        self.type_into(selector, text).await;
        self.press("Enter").await;
    }

    /// Clicks the element matching `selector`, as a user would (the driver scrolls it into
    /// view and refuses if something else would get the click).
    pub async fn click(&self, selector: &str) {
        let element = self.element(selector).await;
        self.call("POST", &format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Writes a PNG screenshot of the viewport to `target/screenshots/<file>.png`; returns
    /// its path.
    pub async fn screenshot(&self, file: &str) -> PathBuf {
        // The driver's snapshot is the last frame painted: without waiting for one after
        // the DOM changed, it showed a message still "sending…" that the DOM had confirmed.
        // Two animation frames (or half a second, should frames be throttled) make sure the
        // picture is of the page the test just checked.
        self.eval(
            "Promise.race([
               new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))),
               new Promise((r) => setTimeout(r, 500))])",
        )
        .await;
        let shot = self.call("GET", "/screenshot", json!({})).await;
        let png = base64_decode(shot.as_str().expect("screenshot data"));
        assert!(
            png.starts_with(b"\x89PNG"),
            "[{}] the screenshot is not a PNG",
            self.name
        );
        save_screenshot(file, &png)
    }

    /// The page's errors up to now (those still in the page included).
    pub async fn page_errors(&self) -> Vec<ConsoleEntry> {
        let _ = self.try_eval("null").await;
        self.console_errors()
    }
}

impl Drive for Page {
    fn label(&self) -> String {
        self.name.clone()
    }

    /// Evaluates `expression` (awaiting a promise) in the page and returns its value as
    /// JSON (as WebDriver serializes it), or what it threw. The page's recorded errors come
    /// back with every answer.
    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        // The expression on lines of its own: a trailing `// comment` ends there.
        let script = format!(
            r#"const done = arguments[arguments.length - 1];
const errors = () => (window.__wtchatPageErrors || []).splice(0);
const text = (x) => (x instanceof Error ? `${{x.name}}: ${{x.message}}` : String(x));
Promise.resolve().then(() => (
{expression}
)).then(
  (value) => done({{ value: value === undefined ? null : value, errors: errors() }}),
  (e) => done({{ thrown: text(e), errors: errors() }}));"#
        );
        let answer = self
            .command(
                "POST",
                "/execute/async",
                json!({"script": script, "args": []}),
            )
            .await?;
        if let Some(errors) = answer["errors"].as_array() {
            self.errors
                .lock()
                .unwrap()
                .extend(errors.iter().map(|e| ConsoleEntry {
                    level: "error".into(),
                    source: e["source"].as_str().unwrap_or("page").to_string(),
                    text: e["text"].as_str().unwrap_or("").to_string(),
                }));
        }
        match answer.get("thrown") {
            Some(thrown) => Err(thrown.as_str().unwrap_or("exception").to_string()),
            None => Ok(answer["value"].clone()),
        }
    }

    /// The page errors the evaluations so far handed over (see the module doc: errors
    /// before the collector was installed are not among them).
    fn console(&self) -> Vec<ConsoleEntry> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // Closing the keeper's stdin stops the driver, its browser and Xvfb (see `open`);
        // give them a moment to exit and clean up, then make sure the group is gone.
        drop(self.lifeline.take());
        if exited_within(&mut self.keeper, Duration::from_secs(5)) {
            return;
        }
        // The keeper leads its own process group: kill all of it, by that id.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.keeper.id())])
            .status();
        let _ = self.keeper.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
