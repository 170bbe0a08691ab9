//! A room left and joined again at once, over WebTransport (protocol 4), with the room's old
//! stream delayed: the browser client's guard in `openWebTransport` (lib/client/wtchat.js)
//! with the real client in a real browser, against the real server.
//!
//! Why: over protocol 4 the server opens a unidirectional stream per joined room (first frame
//! `joined`, `left` last, then finished; docs/src/protocol.md). Streams are independent, so
//! when a page leaves a room and joins it again, what was still in flight on the room's OLD
//! stream (frames the server sent before the leave, the `left` last) may be read AFTER the NEW
//! stream's `joined` and whatever follows it. Those frames are old news: applied, a stale edit
//! would put an older text back over a newer one, a stale `presence` would bring back a member
//! who has left since. The client takes the stream that delivered a room's latest `joined` as
//! the room's, and drops frames about the room from any other stream.
//!
//! How the race is forced, deterministically: before the client loads, the page wraps the
//! global `WebTransport` in a subclass whose `incomingUnidirectionalStreams` hands the client
//! each receive stream piped through a gate the test controls ([`GATE`]): `holdStream(n)`
//! holds the n-th stream's chunks as they arrive (they are buffered, and logged), and
//! `releaseStream(n)` lets them through, in order. That is the network delaying one stream;
//! the client's code and the server are untouched. The scenario ([`rejoin_race`]):
//!
//! 1. the page connects over WebTransport, protocol 4, and joins room R (stream #0); Bob (a
//!    WebSocket client) says "one", which the page shows;
//! 2. stream #0 is held; while it is, Bob edits "one" and Carl joins R: both frames reach the
//!    page's gate on stream #0 and stay there;
//! 3. the page leaves R (the server's `left` reaches the gate on stream #0, which the server
//!    then finishes) and joins R again: stream #1 opens with `joined`, is delivered, and the
//!    join completes with the room as it is now (the edit, Carl);
//! 4. Carl leaves and Bob edits "one" again, both on stream #1: the page shows them;
//! 5. stream #0 is released: its stale edit, Carl's stale join and its `left` reach the
//!    client after stream #1's `joined` (the test checks that order: the race happened);
//! 6. Bob says "two" and the page answers: the rejoined room is live.
//!
//! What the page shows is asserted: the messages in order with their numbers, senders and
//! newest texts (not the stale edit), the members (not Carl), the room still joined and
//! connected, no `closed` status or error after the rejoin, one session, no console error.
//!
//! Without the guard (the served client with its `if (roomStream && …) {…}` block taken out,
//! tried by hand) both browsers fail at step 5: the page shows "one, edited" again and Carl
//! (3 members). The stale `left` alone would not show: the client ignores a `left` without a
//! code (a kick's has one), so the scenario needs the stale edit and presence to catch a
//! missing guard.
//!
//! In Chromium and in Firefox ESR. Without a browser a test prints a loud SKIPPED line (and
//! fails under `CI=true`).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/firefox.rs"]
mod firefox;

use browser::{Browser, Drive};
use common::{Client, TestServer, start};
use firefox::Firefox;
use serde_json::{Value, json};

/// One test at a time: a browser connecting while another one races its streams on a small
/// machine gains nothing.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Run before the page's scripts: `WebTransport` becomes a subclass whose incoming
/// unidirectional streams go through a gate each, numbered by arrival (0, 1, …):
///
/// - `holdStream(n)`: from now on the n-th stream's chunks are held as they arrive (a stream
///   not arrived yet is held from its first chunk); `releaseStream(n)`: the held chunks go
///   to the client, in order, and the rest as they come (the stream's end too, if it came);
/// - `__streams[n]`: what arrived at the gate (`frames`: each line's type, `presence:join`
///   for presence, with the room's name in `room`; `text`: the raw text) whatever was held,
///   what went through to the client (`handed`), whether the server finished the stream
///   (`ended`) and whether the client read it to its end (`consumed`: set when the client
///   asks for more after its last chunk, so every line before it has been handled, since the
///   client handles a chunk's lines before it reads again);
/// - `__handed`: `[n, type]` of every line handed to the client, in the order it got them;
/// - `__sessions`: the URL of every session the page opened.
const GATE: &str = r#"(() => {
  const Real = window.WebTransport;
  if (typeof Real !== "function") return;
  const streams = (window.__streams = []);
  const handed = (window.__handed = []);
  const sessions = (window.__sessions = []);
  const gates = [];
  const holdOnArrival = new Set();
  window.holdStream = (n) => {
    if (gates[n]) gates[n].hold();
    else holdOnArrival.add(n);
    return n;
  };
  window.releaseStream = (n) => {
    if (!gates[n]) throw new Error(`no stream ${n} to release`);
    return gates[n].release();
  };
  const typeOf = (line) => {
    try {
      const frame = JSON.parse(line);
      return frame.type === "presence" ? `presence:${frame.event}` : String(frame.type);
    } catch {
      return "unparsable";
    }
  };
  const realPipeThrough = ReadableStream.prototype.pipeThrough;
  const gate = (raw) => {
    const n = streams.length;
    const record = { n, room: null, frames: [], text: "", held: holdOnArrival.has(n),
                     heldChunks: 0, handed: [], ended: false, consumed: false };
    streams.push(record);
    const decoder = new TextDecoder();
    let partial = "";
    const buffer = [];
    let controller = null;
    let endWaits = null;
    gates[n] = {
      hold() { record.held = true; },
      release() {
        record.held = false;
        const released = buffer.length;
        for (const chunk of buffer.splice(0)) controller.enqueue(chunk);
        endWaits?.();
        return released;
      },
    };
    const gated = raw.pipeThrough(new TransformStream({
      start(c) { controller = c; },
      transform(chunk) {
        const text = decoder.decode(chunk, { stream: true });
        record.text += text;
        partial += text;
        let nl;
        while ((nl = partial.indexOf("\n")) >= 0) {
          const line = partial.slice(0, nl);
          partial = partial.slice(nl + 1);
          if (!line.trim()) continue;
          record.frames.push(typeOf(line));
          if (record.room === null) {
            try { record.room = JSON.parse(line).room ?? null; } catch { /* not JSON */ }
          }
        }
        if (record.held) {
          buffer.push(chunk);
          record.heldChunks += 1;
        } else {
          controller.enqueue(chunk);
        }
      },
      flush() {
        record.ended = true;
        // A held stream ends only once released, after its held chunks.
        if (record.held) return new Promise((resolve) => { endWaits = resolve; });
      },
    }));
    // The client reads a stream through a `TextDecoderStream` (`pipeThrough`): what comes
    // out of it goes to the client one read at a time, and is logged as it goes.
    gated.pipeThrough = function (transform, options) {
      const reader = realPipeThrough.call(this, transform, options).getReader();
      let partialOut = "";
      return new ReadableStream({
        async pull(c) {
          const { value, done } = await reader.read();
          if (done) {
            record.consumed = true;
            c.close();
            return;
          }
          partialOut += String(value);
          let nl;
          while ((nl = partialOut.indexOf("\n")) >= 0) {
            const line = partialOut.slice(0, nl);
            partialOut = partialOut.slice(nl + 1);
            if (!line.trim()) continue;
            record.handed.push(typeOf(line));
            handed.push([n, typeOf(line)]);
          }
          c.enqueue(value);
        },
        cancel(reason) { return reader.cancel(reason); },
      }, { highWaterMark: 0 });
    };
    return gated;
  };
  class GatedWebTransport extends Real {
    #incoming = null;
    constructor(url, options) {
      super(url, options);
      sessions.push(String(url));
    }
    get incomingUnidirectionalStreams() {
      this.#incoming ??= super.incomingUnidirectionalStreams.pipeThrough(
        new TransformStream({ transform: (raw, c) => c.enqueue(gate(raw)) }),
      );
      return this.#incoming;
    }
  }
  window.WebTransport = GatedWebTransport;
})();"#;

/// Run in the page (the demo page's join screen: the server's origin, no connection of its
/// own): imports the client, connects to `room` as "ann" over WebTransport and shows the room
/// in `#under-test` as a page would from the client's API and events (as the README's
/// example does): the messages (`li` with `data-seq`, `data-from`, the text; edits applied as
/// they come) and the members' names. `__show(chat)` shows another room's Chat there instead.
/// Resolves `[transport, the client's PROTOCOL]` (the session's own, from the server's answer
/// to `hello`, may come after the room's stream: see [`rejoin_race`]).
const CONNECT: &str = r#"(async (room) => {
  const { connect, PROTOCOL } = await import("/wtchat/wtchat.js");
  const view = document.body.appendChild(document.createElement("section"));
  view.id = "under-test";
  const list = view.appendChild(document.createElement("ol"));
  const people = view.appendChild(document.createElement("ul"));
  const item = (m) => {
    const li = document.createElement("li");
    li.dataset.seq = String(m.seq);
    li.dataset.from = m.from;
    li.textContent = m.text;
    return li;
  };
  const showMembers = (members) =>
    people.replaceChildren(...members.map((m) => {
      const li = document.createElement("li");
      li.textContent = m.name;
      return li;
    }));
  window.__show = (chat) => {
    window.__shown = chat;
    list.replaceChildren(...chat.messages.map(item));
    showMembers(chat.members);
    chat.on("message", (m) => { if (window.__shown === chat) list.append(item(m)); });
    chat.on("edited", (e) => {
      const li = window.__shown === chat && list.querySelector(`li[data-seq="${e.seq}"]`);
      if (li) li.textContent = e.text;
    });
    chat.on("deleted", (e) => {
      if (window.__shown === chat) list.querySelector(`li[data-seq="${e.seq}"]`)?.remove();
    });
    chat.on("presence", (p) => { if (window.__shown === chat) showMembers(p.members); });
  };
  const chat = await connect({ room, name: "ann", transport: "webtransport" });
  window.__first = chat;
  window.__show(chat);
  return [chat.transport, PROTOCOL];
})"#;

/// Run in the page: joins `room` again on the connection (from the Chat of its first join,
/// left by then), logging the new Chat's `status` and `error` events from the start in
/// `__afterRejoin`, and shows it. Resolves `[status, members' names, texts]` once joined.
const REJOIN: &str = r#"(async (room) => {
  const log = (window.__afterRejoin = []);
  const chat = await window.__first.join(room, { on: {
    status: (s) => log.push(["status", s.status, s.reason ?? null]),
    error: (e) => log.push(["error", e.code]),
  } });
  window.__rejoined = chat;
  window.__show(chat);
  return [chat.status, chat.members.map((m) => m.name).sort(), chat.messages.map((m) => m.text)];
})"#;

/// What the page shows of the room: `[seq, from, text]` per message, in order.
const SHOWN: &str = "[...document.querySelectorAll('#under-test ol li')]
    .map((li) => [Number(li.dataset.seq), li.dataset.from, li.textContent])";

/// The members' names the page shows, sorted.
const MEMBERS: &str =
    "[...document.querySelectorAll('#under-test ul li')].map((li) => li.textContent).sort()";

/// [`browser::wait_json`], telling the streams' log when it times out.
async fn wait_json(page: &impl Drive, what: &str, expression: &str, want: Value) {
    browser::wait_json_telling(page, what, expression, want, "window.__streams").await
}

/// `[seq, from, text]` as [`SHOWN`] gives them.
fn shown(list: &[(u64, &str, &str)]) -> Value {
    json!(
        list.iter()
            .map(|(seq, from, text)| json!([seq, from, text]))
            .collect::<Vec<_>>()
    )
}

/// Bob edits his message `seq` to `text`; waits for the server's ack.
async fn edit(bob: &mut Client, room: &str, seq: u64, text: &str, id: &str) {
    bob.send(json!({"type": "edit", "room": room, "seq": seq, "text": text, "id": id}))
        .await;
    bob.answer(id)
        .await
        .unwrap_or_else(|code| panic!("bob's edit {id} refused: {code}"));
}

/// The scenario of the module's doc, on `page` (which has [`GATE`] and shows the demo page's
/// join screen of `server`), in `room`.
async fn rejoin_race(page: &impl Drive, server: &TestServer, room: &str) {
    let mut bob = Client::ws(server).await;
    bob.join(room, "bob").await;

    // 1. Over WebTransport, protocol 4; the room's frames on a stream of its own (#0). The
    // session's protocol is the server's answer to `hello`, on the session's stream: the room's
    // stream may deliver the join before it, so it is waited for.
    let connected = page.eval(&format!("{CONNECT}({})", json!(room))).await;
    assert_eq!(
        connected,
        json!(["webtransport", 4]),
        "[{}] [transport, the client's protocol]",
        page.label()
    );
    page.wait_for(
        "the server's answer to hello: protocol 4",
        "window.__first._link.protocol === 4",
    )
    .await;
    page.wait_for(
        "stream #0: the room's, begun with its joined",
        &format!(
            "window.__streams.length === 1 && window.__streams[0].room === {} && window.__streams[0].frames[0] === 'joined'",
            json!(room)
        ),
    )
    .await;
    wait_json(page, "members", MEMBERS, json!(["ann", "bob"])).await;
    let one = bob.say(room, "one", "b1").await;
    wait_json(
        page,
        "Bob's first message",
        SHOWN,
        shown(&[(one, "bob", "one")]),
    )
    .await;

    // 2. The network holds stream #0 back; what the server sends on it meanwhile waits.
    page.eval("holdStream(0)").await;
    edit(&mut bob, room, one, "one, edited", "b2").await;
    page.wait_for(
        "Bob's edit to reach the gate on stream #0",
        "window.__streams[0].text.includes('one, edited')",
    )
    .await;
    let mut carl = Client::ws(server).await;
    carl.join(room, "carl").await;
    page.wait_for(
        "Carl's join to reach the gate on stream #0",
        "window.__streams[0].frames.includes('presence:join') && window.__streams[0].text.includes('carl')",
    )
    .await;

    // 3. Leave and join again: the old stream's `left` is at the gate (the server finished
    // that stream), so the new join opens stream #1.
    page.eval("window.__first.leave()").await;
    page.wait_for(
        "the left, and the end, of stream #0 at the gate",
        "window.__streams[0].frames.at(-1) === 'left' && window.__streams[0].ended",
    )
    .await;
    let rejoined = page.eval(&format!("{REJOIN}({})", json!(room))).await;
    assert_eq!(
        rejoined,
        json!(["connected", ["ann", "bob", "carl"], ["one, edited"]]),
        "[{}] the room as it is when joined again",
        page.label()
    );
    assert_eq!(
        page.eval("[window.__streams.length, window.__streams[1].room, window.__streams[1].frames[0], window.__streams[0].handed.includes('left')]")
            .await,
        json!([2, room, "joined", false]),
        "[{}] stream #1 is the room's new one; #0's left still held",
        page.label()
    );
    wait_json(
        page,
        "the room joined again",
        SHOWN,
        shown(&[(one, "bob", "one, edited")]),
    )
    .await;
    wait_json(page, "members", MEMBERS, json!(["ann", "bob", "carl"])).await;

    // 4. News on the new stream: Carl leaves, Bob edits again.
    carl.send(json!({"type": "leave", "room": room})).await;
    wait_json(page, "Carl gone", MEMBERS, json!(["ann", "bob"])).await;
    edit(&mut bob, room, one, "one, edited twice", "b3").await;
    wait_json(
        page,
        "Bob's second edit",
        SHOWN,
        shown(&[(one, "bob", "one, edited twice")]),
    )
    .await;

    // 5. The old stream comes through at last, after the new one's `joined`.
    let released = page.eval("releaseStream(0)").await;
    assert!(
        released.as_u64().is_some_and(|n| n > 0),
        "[{}] chunks held on stream #0: {released}",
        page.label()
    );
    page.wait_for(
        "the client to read stream #0 to its end",
        "window.__streams[0].consumed",
    )
    .await;
    let stale = page.eval("window.__streams[0].handed").await;
    let stale: Vec<String> = serde_json::from_value(stale).unwrap();
    assert_eq!(
        stale.last().map(String::as_str),
        Some("left"),
        "[{}] stream #0 as handed to the client: {stale:?}",
        page.label()
    );
    for held in ["update", "presence:join"] {
        assert!(
            stale.iter().any(|t| t == held),
            "[{}] stream #0 carried a stale {held}: {stale:?}",
            page.label()
        );
    }
    let order = page.eval("window.__handed").await;
    let order: Vec<(u64, String)> = serde_json::from_value(order).unwrap();
    let new_joined = order.iter().position(|(n, t)| *n == 1 && t == "joined");
    let old_left = order.iter().position(|(n, t)| *n == 0 && t == "left");
    assert!(
        matches!((new_joined, old_left), (Some(j), Some(l)) if j < l),
        "[{}] the old stream's left reached the client after the new stream's joined: {order:?}",
        page.label()
    );
    // Every line of it has been handled: the page shows the room as it is, not as it was.
    assert_eq!(
        page.eval(&format!(
            "[{SHOWN}, {MEMBERS}, window.__rejoined.memberCount, window.__rejoined.status]"
        ))
        .await,
        json!([
            shown(&[(one, "bob", "one, edited twice")]),
            ["ann", "bob"],
            2,
            "connected"
        ]),
        "[{}] once the old stream's late frames were read: [messages shown, members shown, \
         member count, status]",
        page.label()
    );

    // 6. The rejoined room is live: Bob's next message arrives, and the page's reaches Bob.
    let two = bob.say(room, "two", "b4").await;
    let ack = page
        .eval("window.__rejoined.send('ann is back').then((a) => a.seq)")
        .await;
    let back = ack.as_u64().expect("the page's send is acknowledged");
    let heard = bob
        .next_matching("ann's message", |f| {
            f["type"] == "message" && f["text"] == "ann is back"
        })
        .await;
    assert_eq!(heard["seq"], back);
    let want = shown(&[
        (one, "bob", "one, edited twice"),
        (two, "bob", "two"),
        (back, "ann", "ann is back"),
    ]);
    wait_json(page, "what the page shows", SHOWN, want.clone()).await;
    assert_eq!(
        page.eval(SHOWN).await,
        want,
        "[{}] the messages shown, in order, newest texts",
        page.label()
    );
    assert_eq!(
        page.eval(MEMBERS).await,
        json!(["ann", "bob"]),
        "[{}] the members shown (Carl left)",
        page.label()
    );
    let state = page
        .eval(
            "(async () => {
               const chat = window.__rejoined;
               return [chat.status, chat.transport, chat.memberCount,
                       chat.members.map((m) => m.name).sort(), chat.messages.map((m) => m.text),
                       (await window.__first.join(chat.room)) === chat,
                       window.__afterRejoin, window.__sessions.length];
             })()",
        )
        .await;
    assert_eq!(
        state,
        json!([
            "connected",
            "webtransport",
            2,
            ["ann", "bob"],
            ["one, edited twice", "two", "ann is back"],
            true,
            [],
            1
        ]),
        "[{}] [status, transport, member count, members, texts, still the room's Chat, \
         its status and error events since the rejoin, sessions]",
        page.label()
    );
    page.assert_no_console_errors();
}

#[tokio::test]
async fn chromium_a_room_joined_again_ignores_its_old_streams_late_frames() {
    let test = "chromium_a_room_joined_again_ignores_its_old_streams_late_frames";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::launch_or_skip(test).await else {
        return;
    };
    let server = start().await;
    let page = browser.page("ann", 1024, 768, Some(GATE)).await;
    page.goto(&format!("http://127.0.0.1:{}/", server.http.port()))
        .await;
    rejoin_race(&page, &server, "rejoin").await;
}

#[tokio::test]
async fn firefox_a_room_joined_again_ignores_its_old_streams_late_frames() {
    let test = "firefox_a_room_joined_again_ignores_its_old_streams_late_frames";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(firefox) = Firefox::shared_or_skip(test).await else {
        return;
    };
    let server = start().await;
    let page = firefox.page("ann", (1024, 768), Some(GATE)).await;
    page.goto(&format!("http://127.0.0.1:{}/", server.http.port()))
        .await;
    rejoin_race(&page, &server, "rejoin").await;
}
