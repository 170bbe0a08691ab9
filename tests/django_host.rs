//! The book's Django auth webhook, run for real: a Django site (Django from PyPI, its own
//! sessions and users in an SQLite file, served by Django's development server) beside the
//! `wtchat` server on another port of the same host, with the book's `wtchat_verified`
//! and `chat_auth` (read from docs/src/webhooks.md, not copied) answering the chat's auth webhook.
//! Chromium, Firefox and WebKitGTK (cookies are where engines differ) each log in on the site through
//! Django's own `login()`, then the client, loaded from the chat server, connects over every
//! transport under that login, with no token: the browser's ticket request carries Django's
//! session cookie. A browser that has not logged in is refused with the view's reason. Without Django the test skips loudly (and fails
//! under `CI=true`; `scripts/test` installs it with pip).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/firefox.rs"]
mod firefox;
#[path = "common/webkit.rs"]
mod webkit;

use std::process::{Command, Stdio};

use browser::{Browser, Drive, connect_and_send, under_ci};
use common::{free_port, start_with};
use serde_json::json;

/// The webhook secret both sides know (at least 32 bytes).
const SECRET: &str = "django-host-test-secret-0123456789abcdef";

/// The site around the book's code: settings, a user, a login view, the URLs, and
/// Django's development server. `BOOK_CODE` is replaced by the book's two blocks.
const SITE: &str = r#"
import os, sys

import django
from django.conf import settings

settings.configure(
    DEBUG=True,
    ALLOWED_HOSTS=["localhost"],
    SECRET_KEY="a test site's secret key, long enough for Django to take it",
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[2]}},
    WTCHAT_WEBHOOK_SECRET=os.environ["WTCHAT_WEBHOOK_SECRET"],
)
django.setup()

BOOK_CODE

from django.contrib.auth import login
from django.core.management import call_command
from django.core.servers.basehttp import run
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path


def log_in(request):
    login(request, get_user_model().objects.get(username="ann"))
    return HttpResponse("<!doctype html><title>shop</title><p>logged in</p>")


def page(request):
    return HttpResponse("<!doctype html><title>shop</title><p>not logged in</p>")


def no_icon(request):
    return HttpResponse(b"", content_type="image/x-icon")


urlpatterns = [
    path("chat/auth", chat_auth),
    path("login", log_in),
    path("", page),
    path("favicon.ico", no_icon),
]

call_command("migrate", verbosity=0)
get_user_model().objects.create_user("ann", password="not used here")
run("127.0.0.1", int(sys.argv[1]), get_wsgi_application(), threading=True)
"#;

fn django_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import django"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The site on `port`, its database and log in a directory of its own; stopped on drop.
struct Site {
    _child: common::KillOnDrop,
    dir: tempfile::TempDir,
}

impl Site {
    async fn start(port: u16) -> Site {
        let code = format!(
            "{}\n{}",
            common::book_block("webhooks", "python", "def wtchat_verified"),
            common::book_block("webhooks", "python", "def chat_auth"),
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("site.py");
        std::fs::write(&script, SITE.replace("BOOK_CODE", &code)).unwrap();
        let log = std::fs::File::create(dir.path().join("site.log")).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.path().join("site.sqlite3"))
            .env("WTCHAT_WEBHOOK_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3 starts");
        let site = Site {
            _child: common::KillOnDrop(child),
            dir,
        };
        common::wait_listening(port, "the Django site", || site.log()).await;
        site
    }

    /// What Django logged (requests, tracebacks), for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("site.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn the_readme_django_auth_webhook_logs_a_browser_in_on_every_transport() {
    const TEST: &str = "the_readme_django_auth_webhook_logs_a_browser_in_on_every_transport";
    if !django_installed() {
        assert!(
            !under_ci(),
            "Django is required under CI (scripts/test installs it with pip)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {TEST}: Django not installed (pip install django, or run scripts/test) ***"
        );
        return;
    }
    let chromium = Browser::launch_or_skip(TEST).await;
    let firefox = firefox::Firefox::launch_or_skip(TEST).await;
    let port = free_port();
    let django = Site::start(port).await;
    // One host name for both, as a site and its chat on two ports are: the browser sends
    // the site's cookie to the chat server's port too.
    let site = format!("http://localhost:{port}");
    let origin = site.clone();
    let server = start_with(move |c| {
        c.auth_webhook(format!("http://127.0.0.1:{port}/chat/auth"))
            .webhook_secret(SECRET)
            .allow_origin(origin)
    })
    .await;
    let chat = format!("http://localhost:{}", server.http.port());
    let connect = |transport: &str| connect_and_send(&chat, transport);

    // Chromium, Firefox, then WebKitGTK (each when installed): cookies are where engines
    // differ.
    let mut said_by = Vec::new();
    if let Some(chromium) = &chromium {
        let stranger = chromium.page("stranger", 1024, 768, None).await;
        stranger.goto(&format!("{site}/")).await;
        let ann = chromium.page("ann", 1024, 768, None).await;
        ann.goto(&format!("{site}/login")).await;
        said_by.push(logs_in(&stranger, &ann, &TRANSPORTS, &connect, &server, &django).await);
    }
    if let Some(firefox) = &firefox {
        let stranger = firefox.page("stranger", (1024, 768), None).await;
        stranger.goto(&format!("{site}/")).await;
        let ann = firefox.page("ann", (1024, 768), None).await;
        ann.goto(&format!("{site}/login")).await;
        said_by.push(logs_in(&stranger, &ann, &TRANSPORTS, &connect, &server, &django).await);
    }
    // WebKitGTK, Safari's engine, has no WebTransport: the other three.
    if webkit::installed_or_skip(TEST) {
        let (stranger, ann) = tokio::join!(
            webkit::Page::open("webkit stranger", (1024, 768), &[]),
            webkit::Page::open("webkit ann", (1024, 768), &[]),
        );
        stranger.goto(&format!("{site}/")).await;
        ann.goto(&format!("{site}/login")).await;
        said_by.push(
            logs_in(
                &stranger,
                &ann,
                &TRANSPORTS[1..],
                &connect,
                &server,
                &django,
            )
            .await,
        );
    }
    // One Django user behind every message, in every browser: the sender id the server
    // derives from the user the view named.
    assert!(
        said_by.iter().all(|s| s.is_some() && *s == said_by[0]),
        "{said_by:?}"
    );
}

/// A page not logged in is refused with the view's reason; a page logged in through
/// Django's `login()` chats as `ann` over every transport. The sender id of ann's messages.
async fn logs_in(
    stranger: &impl Drive,
    ann: &impl Drive,
    transports: &[&str],
    connect: &impl Fn(&str) -> String,
    server: &common::TestServer,
    django: &Site,
) -> Option<String> {
    let refused = stranger.eval(&connect("websocket")).await;
    assert_eq!(
        refused[0],
        "unauthorized",
        "[{}] {refused}\ndjango: {}",
        stranger.label(),
        django.log()
    );
    assert!(
        refused[1].as_str().unwrap().contains("log in first"),
        "[{}] {refused}",
        stranger.label()
    );
    let before = server
        .chat
        .history("lobby", None, 100)
        .await
        .unwrap()
        .messages
        .len();
    for (n, &transport) in transports.iter().enumerate() {
        let got = ann.eval(&connect(transport)).await;
        assert_eq!(
            got,
            json!([transport, "ann", before + n + 1]),
            "[{}] over {transport}: {:#?}\ndjango: {}",
            ann.label(),
            ann.console(),
            django.log()
        );
    }
    let said = server
        .chat
        .history("lobby", None, 100)
        .await
        .unwrap()
        .messages;
    let said = &said[before..];
    assert_eq!(
        said.iter()
            .map(|m| (m.from.clone(), m.text.clone()))
            .collect::<Vec<_>>(),
        transports
            .iter()
            .map(|t| ("ann".to_string(), format!("over {t}")))
            .collect::<Vec<_>>(),
        "[{}]",
        ann.label()
    );
    assert!(
        said.iter().all(|m| m.sender == said[0].sender),
        "[{}] {said:?}",
        ann.label()
    );
    for page in [stranger.label(), ann.label()]
        .iter()
        .zip([stranger.console_errors(), ann.console_errors()])
    {
        let (label, errors) = page;
        // The refused ticket request is a 401 the browser reports as a network error.
        let errors: Vec<_> = errors
            .into_iter()
            .filter(|e| e.source != "network")
            .collect();
        assert!(errors.is_empty(), "[{label}] {errors:#?}");
    }
    said[0].sender.clone()
}

const TRANSPORTS: [&str; 4] = ["webtransport", "websocket", "sse", "longpoll"];
