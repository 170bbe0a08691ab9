// wtchat browser client: chat rooms over WebTransport, with WebSocket, Server-Sent Events
// and long polling as fallbacks.
//
// An ES module with no dependencies and no build step:
//
//   import { connect } from "/wtchat/wtchat.js";
//   const chat = await connect({ room: "lobby", name: "ann" });
//   chat.on("message", (m) => console.log(m.from, m.text));
//   await chat.send("hello");
//
// How it connects: it fetches `/wtchat/config` from the server, then opens WebTransport
// (pinning the development certificate by its SHA-256 digest when the server serves one).
// WebTransport gets a short head start; if it is not ready by then (UDP blocked, a proxy, an
// old browser) a WebSocket attempt starts too and whichever is ready first wins ("happy
// eyeballs"); the loser is closed. Where neither connects within 1.5 s, SSE and then long
// polling join the race. Over WebTransport frames are JSON lines on one bidirectional
// stream and typing notices travel as datagrams; over WebSocket every frame is one text
// message; over SSE and long polling frames come down as events or poll answers and go up
// as posts.
//
// One connection carries every room the page joins (`chat.join(room)`), one `Chat` each:
// browsers allow six HTTP/1.1 connections per host.
//
// Reconnects: when the connection drops, the client reconnects with exponential backoff
// and jitter (unless the server's `bye` frame said not to), joins again with the last
// sequence number and room epoch it saw, and the server replays exactly what was missed.
// Unacknowledged sends are re-sent with their client ids, which the server deduplicates,
// so every message is delivered once and in order, whichever transport the new connection
// uses. Incoming messages are deduplicated by (epoch, seq) as well.
//
// Types: wtchat.d.ts declares the public API (written by hand: it is the documented
// contract). The JSDoc annotations here name those declared types, and `tsc -p check`
// type-checks this file against them (checkJs): a declared method missing here, a wrong
// return type, or an option used here that the declarations do not name fails the check.
// check/exports.js compares the module's exports with the declared ones, both ways.

/** @typedef {import("./wtchat.js").ConnectOptions} ConnectOptions */
/** @typedef {import("./wtchat.js").ErrorCode} ErrorCode */
/** @typedef {import("./wtchat.js").ChatEvents} ChatEvents */
/** @typedef {import("./wtchat.js").Message} Message */
/** @typedef {import("./wtchat.js").Member} Member */
/** @typedef {import("./wtchat.js").Ack} Ack */
/** @typedef {import("./wtchat.js").Reaction} Reaction */
/** @typedef {import("./wtchat.js").ReactionAck} ReactionAck */
/** @typedef {import("./wtchat.js").Reactor} Reactor */
/** @typedef {import("./wtchat.js").Reader} Reader */
/** @typedef {import("./wtchat.js").Unread} Unread */
/** @typedef {import("./wtchat.js").Chat} DeclaredChat */
/** @typedef {import("./wtchat.js").ChatError} DeclaredChatError */

/** The client's version. */
export const VERSION = "0.1.0";

/** The protocol version this client speaks: its first frame on every connection says so. */
export const PROTOCOL = 4;

/** How long WebTransport may try alone before a WebSocket attempt races it. */
const HEAD_START_MS = 500;
/** Reconnect backoff: first delay, growth cap. Each delay is jittered to 50-100%. */
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
/** How long one connection attempt (config, transport, join) may take. */
const ATTEMPT_TIMEOUT_MS = 10000;
/**
 * How long WebTransport and WebSocket may stay silent before SSE and long polling are
 * tried beside them (at once when both failed): a proxy that swallows the WebSocket
 * upgrade costs this, not the whole attempt.
 */
const FALLBACK_MS = 1500;
/**
 * Keepalive: a `ping` whenever the client has sent nothing for this long — or for a third
 * of the server's idle timeout (`limits.idleTimeoutMs`), if that is shorter — busy room or
 * quiet: the server closes a client it has not heard from for its idle timeout...
 */
const PING_EVERY_MS = 20000;
/** ...and the connection is dead when nothing at all came back this long after a ping. */
const PING_TIMEOUT_MS = 10000;
/** At most one typing notice per this interval. */
const TYPING_INTERVAL_MS = 2500;
/** Messages kept in `chat.messages` (oldest dropped first). */
const DEFAULT_MAX_MESSAGES = 1000;
/**
 * What a room remembers of messages it does not hold (pages of `history()`, messages
 * dropped from `chat.messages`): their text and reactions, so that an `update` of one says
 * what changed. At most this many beyond the messages held; the longest known go first.
 */
const EXTRA_MESSAGE_STATES = 1000;
/**
 * How often a request the server dropped (`rate_limited`) or could not store
 * (`storage_failed`) is tried again, keeping its place, before it fails; the n-th retry
 * waits n seconds.
 */
const MAX_RETRIES = 5;
/** Connection attempts that fail with these codes are tried again later. */
const RETRY_CONNECT = ["unreachable", "timeout", "server_full", "rate_limited", "storage_failed", "lost", "shutdown", "too_slow", "busy"];

/**
 * Close codes (WebSocket close code = WebTransport close code = `bye.code`).
 * @type {typeof import("./wtchat.js").CloseCodes}
 */
export const CloseCodes = Object.freeze({
  NORMAL: 1000,
  SHUTDOWN: 4000,
  TOO_SLOW: 4001,
  RECONNECT: 4002,
  IDLE_TIMEOUT: 4003,
  BUSY: 4004,
  PROTOCOL_ERROR: 4400,
  UNAUTHORIZED: 4401,
  KICKED: 4403,
  FRAME_TOO_LARGE: 4409,
});

/**
 * Whether a close code means "reconnect": 4000-4399.
 * @param {number} code
 * @returns {boolean}
 */
export function shouldReconnect(code) {
  return code >= 4000 && code < 4400;
}

/**
 * An error with a machine-readable `code` (the server's error code, or a client one).
 * @implements {Omit<DeclaredChatError, "name">} (`name` is Error's `string` to the checker,
 *   though always "ChatError"; a class field would say so, but the client stays ES2020)
 */
export class ChatError extends Error {
  /**
   * @param {ErrorCode} code
   * @param {string} [message]
   * @param {object} [details]
   */
  constructor(code, message, details) {
    super(message || code);
    /** @type {"ChatError"} */
    this.name = "ChatError";
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

/**
 * Connects to a room; resolves with a {@link Chat} once the room is joined.
 * Rejects with a ChatError: `invalid_name`, `invalid_room` (and other server codes) when the
 * server refuses the join, `unsupported` when a forced transport is missing, `unreachable`
 * when no transport could connect within `timeout` ms, `aborted` when `options.signal` was
 * aborted first.
 *
 * `options.signal` ends the chat whenever it aborts: before this resolves, the attempt stops
 * (a transport it opens meanwhile is closed, not joined) and this rejects at once; after,
 * it is `chat.close()`. A component that connects in an effect aborts in its cleanup.
 * @param {ConnectOptions} options
 * @returns {Promise<Chat>}
 */
export async function connect(options) {
  if (!options || typeof options.room !== "string" || !options.room) {
    throw new TypeError("connect({room, name}) needs a room");
  }
  const { signal } = options;
  if (signal?.aborted) throw new ChatError("aborted", "connect() was aborted");
  const link = new Link(options);
  const chat = new Chat(link, options.room, { on: options.on });
  link.rooms.set(chat.room, chat);
  if (!signal) {
    await link.open();
    return chat;
  }
  const aborted = new Promise((_, reject) => {
    signal.addEventListener("abort", () => {
      link.close();
      reject(new ChatError("aborted", "connect() was aborted"));
    }, { once: true });
  });
  // Whichever loses the race settles later, unobserved: neither may be an unhandled rejection.
  aborted.catch(() => {});
  const opened = link.open();
  opened.catch(() => {});
  await Promise.race([opened, aborted]);
  return chat;
}

const encoder = new TextEncoder();

function hexToBytes(hex) {
  const clean = String(hex).replace(/[^0-9a-f]/gi, "");
  const out = new Uint8Array(clean.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
  return out;
}

/**
 * `url` with what identifies this client on `kind`'s connection: its ticket for that
 * transport (from `POST /wtchat/ticket`), else the host's token, else nothing.
 */
function withIdentity(url, options, kind) {
  const ticket = options.tickets?.[kind];
  const [name, value] = ticket ? ["ticket", ticket] : ["token", options.token];
  if (value == null || value === "") return url;
  const u = new URL(url);
  u.searchParams.set(name, value);
  return u.toString();
}

/**
 * A member as the client keeps it: its id, name and public sender id (what a mention names;
 * absent when the server does not know it), nothing else the frame had.
 * @returns {Member}
 */
function member({ id, name, sender }) {
  return typeof sender === "string" ? { id, name, sender } : { id, name };
}

/** Most sender ids one message may mention (the server's limit). */
const MAX_MENTIONS = 20;
/** A sender id: 16 characters of base64url. */
const SENDER_ID = /^[A-Za-z0-9_-]{16}$/;

/**
 * A message's `mentions` as frames carry them (absent: none): the sender ids it names.
 * @param {any} list
 * @returns {string[]}
 */
function mentionList(list) {
  return Array.isArray(list) ? list.filter((s) => typeof s === "string") : [];
}

/**
 * A reply's quote of the message it answers, as frames carry it (`replyTo`).
 * @param {any} q
 * @returns {import("./wtchat.js").Quote | undefined}
 */
function quote(q) {
  if (!q || typeof q.seq !== "number") return undefined;
  return { seq: q.seq, from: String(q.from ?? ""), text: String(q.text ?? ""), deleted: !!q.deleted };
}

/**
 * A message's reactions as frames carry them (`[{reaction, count}]`, in the order they were
 * first added), each saying whether this client's reactions (`mine`) are among them.
 * @param {any} list
 * @param {Set<string>} [mine]
 * @returns {Reaction[]}
 */
function reactionList(list, mine) {
  if (!Array.isArray(list)) return [];
  return list
    .filter((r) => r && typeof r.reaction === "string" && r.count > 0)
    .map((r) => ({ reaction: r.reaction, count: r.count, mine: !!mine?.has(r.reaction) }));
}

/**
 * Whether two lists of reactions show the same.
 * @param {readonly Reaction[]} a
 * @param {readonly Reaction[]} b
 */
function sameReactions(a, b) {
  return a.length === b.length && a.every((r, i) => r.reaction === b[i].reaction && r.count === b[i].count && r.mine === b[i].mine);
}

/**
 * `counts` with this client's change from the reactions `before` to those `after` counted
 * in: what an `update` still on its way will say.
 * @param {{reaction: string, count: number}[]} counts
 * @param {Set<string>} before
 * @param {Set<string>} after
 */
function countIn(counts, before, after) {
  const out = counts.map((r) => ({ reaction: r.reaction, count: r.count }));
  for (const reaction of after) {
    if (before.has(reaction)) continue;
    const r = out.find((x) => x.reaction === reaction);
    if (r) r.count += 1;
    else out.push({ reaction, count: 1 });
  }
  for (const reaction of before) {
    if (after.has(reaction)) continue;
    const r = out.find((x) => x.reaction === reaction);
    if (r) r.count -= 1;
  }
  return out.filter((r) => r.count > 0);
}

/**
 * One who reacted, as a `reactions` answer names them.
 * @param {any} r
 * @returns {Reactor}
 */
function reactor(r) {
  /** @type {Reactor} */
  const out = { reaction: String(r?.reaction ?? ""), from: String(r?.from ?? ""), at: Number(r?.at) };
  if (typeof r?.sender === "string") out.sender = r.sender;
  return out;
}

function randomId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("").slice(0, 10);
}

/**
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
function delay(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/**
 * Opens a WebSocket. Resolves with a connection once open; rejects if it fails first.
 * `events.frame(conn, obj)` and `events.closed(conn, info)` report what happens after.
 */
function openWebSocket(url, events, signal) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      reject(new ChatError("unreachable", `websocket: ${e.message}`));
      return;
    }
    let open = false;
    let done = false;
    const conn = {
      kind: "websocket",
      write(obj) {
        if (ws.readyState !== WebSocket.OPEN) return false;
        ws.send(JSON.stringify(obj));
        return true;
      },
      writeEphemeral(obj) {
        return conn.write(obj);
      },
      close(code = 1000, reason = "") {
        // Closing a socket that is still connecting makes the browser log an error; let it
        // open first, then close it.
        if (ws.readyState === WebSocket.CONNECTING) {
          ws.addEventListener("open", () => ws.close(code, reason), { once: true });
        } else if (ws.readyState === WebSocket.OPEN) {
          ws.close(code, reason);
        }
      },
    };
    const finish = (info) => {
      if (done) return;
      done = true;
      if (open) events.closed(conn, info);
      else reject(new ChatError("unreachable", "websocket: connection failed"));
    };
    ws.onopen = () => {
      if (signal?.aborted) {
        ws.close(1000, "not needed");
        return;
      }
      open = true;
      resolve(conn);
    };
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      events.frame(conn, frame);
    };
    ws.onerror = () => {}; // always followed by close
    ws.onclose = (e) => finish({ code: e.code, reason: e.reason });
    signal?.addEventListener("abort", () => {
      if (!open) {
        conn.close(1000, "not needed");
        reject(new ChatError("aborted", "websocket: not needed"));
      }
    }, { once: true });
  });
}

/**
 * A refusal for load (429 or 503 from an HTTP route: the server, or this address's share of
 * it, is busy) as a `busy` error that waits the answer's `Retry-After`; null for any other
 * answer.
 */
function busyRefusal(response, what) {
  if (response.status !== 429 && response.status !== 503) return null;
  const seconds = Number(response.headers.get("retry-after")) || 1;
  return new ChatError("busy", `${what}: HTTP ${response.status}`, { retryAfter: seconds * 1000 });
}

/** Of the failed attempts, one refused for load (the longest wait): every transport waits it out. */
function busyAmong(errors) {
  const busy = errors.filter((e) => e?.code === "busy");
  return busy.sort((a, b) => (b.retryAfter ?? 0) - (a.retryAfter ?? 0))[0] || null;
}

/** Most frames in one post (the server's limit). */
const MAX_FRAMES_PER_POST = 64;

/**
 * The sending half of the transports whose frames go up as posts (SSE, long polling):
 * frames written while a post is under way go together in the next one, in order, as many
 * as fit in `maxBytes` (the server's `limits.maxPostBytes`; a post over it is refused).
 */
function poster(conn, fail, maxBytes = Infinity) {
  let queue = [];
  let busy = false;
  const encoder = new TextEncoder();
  const take = () => {
    let bytes = 0;
    let n = 0;
    while (n < queue.length && n < MAX_FRAMES_PER_POST) {
      bytes += encoder.encode(queue[n]).length + 1;
      if (n > 0 && bytes > maxBytes) break;
      n++;
    }
    return queue.splice(0, n);
  };
  const flush = async () => {
    if (busy || queue.length === 0 || !conn.post) return;
    busy = true;
    const lines = take();
    try {
      const response = await fetch(conn.post, {
        method: "POST",
        body: lines.join("\n"),
        headers: { "content-type": "text/plain", "wtchat-secret": conn.secret },
        cache: "no-store",
      });
      // 204 (here) or 202 (sent on to the session's node); anything else: the session is gone.
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
    } catch (e) {
      fail(e);
      return;
    } finally {
      busy = false;
    }
    flush();
  };
  return (obj) => {
    queue.push(JSON.stringify(obj));
    flush();
    return true;
  };
}

/**
 * Server-Sent Events: frames come as events, go up as posts. Resolves once the stream's
 * `session` event named where to post. When the stream breaks, the connection is over
 * (the chat reconnects and resumes, as on the other transports).
 */
function openSse(url, events, signal, maxPost) {
  return new Promise((resolve, reject) => {
    let source;
    try {
      source = new EventSource(url);
    } catch (e) {
      reject(new ChatError("unreachable", `sse: ${e.message}`));
      return;
    }
    let open = false;
    let done = false;
    const conn = {
      kind: "sse",
      post: null,
      secret: null,
      write: null,
      writeEphemeral(obj) { return conn.write(obj); },
      close() { finish({}); },
    };
    const finish = (info) => {
      if (done) return;
      done = true;
      source.close();
      if (open) events.closed(conn, info);
      else reject(new ChatError("unreachable", "sse: connection failed"));
    };
    conn.write = poster(conn, () => finish({}), maxPost);
    source.onmessage = (e) => {
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (frame.type === "session") {
        conn.post = new URL(frame.post, url).toString();
        conn.secret = frame.secret;
        if (!open) {
          if (signal?.aborted) return finish({});
          open = true;
          resolve(conn);
        }
        return;
      }
      if (!done) events.frame(conn, frame);
    };
    source.onerror = () => finish({});
    signal?.addEventListener("abort", () => { if (!open) { finish({}); } }, { once: true });
  });
}

/**
 * Long polling: `POST` opens a session, held `GET`s fetch its frames (each asking from the
 * last one it got, so a lost answer is asked again), posts carry ours up.
 */
async function openPoll(url, events, signal, maxPost) {
  let response;
  let session;
  try {
    response = await fetch(url, { method: "POST", cache: "no-store", signal });
    if (response.ok) session = await response.json();
  } catch (e) {
    throw new ChatError(signal?.aborted ? "aborted" : "unreachable", `longpoll: ${e.message}`);
  }
  if (!session) throw busyRefusal(response, "longpoll") || new ChatError("unreachable", `longpoll: HTTP ${response.status}`);
  let done = false;
  const stop = new AbortController();
  const conn = {
    kind: "longpoll",
    post: new URL(session.post, url).toString(),
    secret: session.secret,
    write: null,
    writeEphemeral(obj) { return conn.write(obj); },
    close() { finish({}); },
  };
  const finish = (info) => {
    if (done) return;
    done = true;
    stop.abort();
    events.closed(conn, info);
  };
  conn.write = poster(conn, () => finish({}), maxPost);
  (async () => {
    let after = 0;
    const poll = new URL(session.poll, url);
    while (!done) {
      try {
        // The same URL for every poll, `after` in a header: a page on another origin than
        // the chat's is preflighted once for the session, not once per poll.
        const headers = { "wtchat-secret": session.secret, "wtchat-after": String(after) };
        const response = await fetch(poll, { cache: "no-store", signal: stop.signal, headers });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const answer = await response.json();
        after = answer.next;
        for (const frame of answer.frames) {
          if (done) return;
          events.frame(conn, frame);
          // The server's last word: the session is over (a poll now would get 404).
          if (frame.type === "bye") return finish({ code: frame.code });
        }
      } catch {
        finish({});
        return;
      }
    }
  })();
  return conn;
}

/**
 * Opens a WebTransport session and its bidirectional stream (the session's own frames; each
 * joined room's come on a stream the server opens for it). Resolves with a connection once
 * both are ready; rejects if either fails first.
 */
async function openWebTransport(url, hashes, events, signal) {
  const options = {};
  if (hashes && hashes.length) {
    options.serverCertificateHashes = hashes.map((h) => ({
      algorithm: h.algorithm,
      value: hexToBytes(h.value),
    }));
  }
  let wt;
  try {
    wt = new WebTransport(url, options);
  } catch (e) {
    throw new ChatError("unreachable", `webtransport: ${e.message}`);
  }
  // Every promise of a WebTransport may reject; none may go unhandled.
  wt.ready.catch(() => {});
  wt.closed.catch(() => {});
  const abort = () => {
    try { wt.close({ closeCode: 1000, reason: "not needed" }); } catch { /* already closed */ }
  };
  signal?.addEventListener("abort", abort, { once: true });
  let stream;
  try {
    await wt.ready;
    stream = await wt.createBidirectionalStream();
  } catch (e) {
    abort();
    throw new ChatError(signal?.aborted ? "aborted" : "unreachable", `webtransport: ${e.message}`);
  }
  signal?.removeEventListener("abort", abort);
  if (signal?.aborted) {
    abort();
    throw new ChatError("aborted", "webtransport: not needed");
  }

  const writer = stream.writable.getWriter();
  writer.closed.catch(() => {});
  const dgram = wt.datagrams;
  let dgWriter = null;
  try {
    // `createWritable()` is newer than TypeScript's DOM types.
    const streams = /** @type {any} */ (dgram);
    dgWriter = (typeof streams.createWritable === "function" ? streams.createWritable() : dgram.writable).getWriter();
    dgWriter.closed.catch(() => {});
  } catch {
    dgWriter = null;
  }
  const maxDatagram = () => dgram.maxDatagramSize || 1100;
  let closed = false;

  const conn = {
    kind: "webtransport",
    write(obj) {
      if (closed) return false;
      writer.write(encoder.encode(JSON.stringify(obj) + "\n")).catch(() => {});
      return true;
    },
    writeEphemeral(obj) {
      if (closed) return false;
      const bytes = encoder.encode(JSON.stringify(obj));
      if (!dgWriter || bytes.length > maxDatagram()) return conn.write(obj);
      dgWriter.write(bytes).catch(() => {});
      return true;
    },
    close(code = 1000, reason = "") {
      if (closed) return;
      try { wt.close({ closeCode: code, reason }); } catch { /* already closed */ }
      finish({ code, reason });
    },
  };
  const finish = (info) => {
    if (closed) return;
    closed = true;
    events.closed(conn, info);
  };

  // Protocol 4: the stream that carries each room's frames now (by room). A room left and
  // joined again at once has two: the old one's last frames (up to its `left`) and the new
  // one's `joined` travel independently, and when the new stream's come first the old
  // stream's rest is old news (an edit since overwritten, a member since gone) that would
  // otherwise be applied over the new.
  /** @type {Map<string, object>} */
  const roomStreams = new Map();
  // A stream's frames: UTF-8 JSON lines. Resolves when the stream ends. `roomStream`: a
  // token of its own for a room's stream, undefined for the session's.
  /**
   * @param {WebTransportBidirectionalStream["readable"]} readable
   * @param {object} [roomStream]
   */
  const readLines = async (readable, roomStream) => {
    const reader = readable.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.trim()) continue;
          let frame;
          try {
            frame = JSON.parse(line);
          } catch {
            continue;
          }
          if (closed) return;
          if (roomStream && typeof frame?.room === "string") {
            // A room's stream begins with its `joined`, and is the room's from then on.
            if (frame.type === "joined") roomStreams.set(frame.room, roomStream);
            else if (roomStreams.get(frame.room) !== roomStream) continue;
          }
          events.frame(conn, frame);
        }
      }
    } catch {
      /* the stream was reset or the session closed */
    }
  };
  // The session's stream; its end is the session's.
  readLines(stream.readable).then(() => finish({}));
  // Protocol 4: each joined room's frames come on a stream the server opens for the room
  // (so a packet lost from one room's stream holds back no other room).
  (async () => {
    try {
      const incoming = wt.incomingUnidirectionalStreams.getReader();
      for (;;) {
        const { value, done } = await incoming.read();
        if (done || closed) break;
        readLines(value, {});
      }
    } catch {
      /* session closed */
    }
  })();

  // Datagrams: one JSON frame each.
  (async () => {
    const decoder = new TextDecoder();
    let reader;
    try {
      reader = dgram.readable.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let frame;
        try {
          frame = JSON.parse(decoder.decode(value));
        } catch {
          continue;
        }
        if (closed) return;
        events.frame(conn, frame);
      }
    } catch {
      /* session closed */
    }
  })();

  wt.closed.then(
    (info) => finish({ code: info?.closeCode, reason: info?.reason }),
    () => finish({}),
  );
  return conn;
}

/**
 * Opens whichever transport is ready first: WebTransport with a head start, then
 * WebSocket racing it. The loser is closed.
 */
async function dial(config, options, events, state) {
  const forced = options.transport;
  const hasWT = typeof globalThis.WebTransport === "function" && !!config.webtransport;
  if (forced === "webtransport" && !hasWT) {
    throw new ChatError("unsupported", "WebTransport is not available in this browser or server");
  }
  const hasWS = typeof globalThis.WebSocket === "function" && !!config.websocket;
  const hasSse = typeof globalThis.EventSource === "function" && !!config.sse;
  const hasPoll = typeof globalThis.fetch === "function" && !!config.poll;
  if (forced && !{ webtransport: hasWT, websocket: hasWS, sse: hasSse, longpoll: hasPoll }[forced]) {
    throw new ChatError("unsupported", `${forced} is not available in this browser or server`);
  }
  // Where neither WebTransport nor WebSocket gets through: SSE, then long polling, each
  // started once the ones before it failed or kept silent for FALLBACK_MS.
  if (forced === "sse" || forced === "longpoll" || (!forced && !hasWT && !hasWS)) {
    return dialPosted(config, options, events, forced, state);
  }
  const useWT = hasWT && forced !== "websocket";
  const useWS = forced !== "webtransport" && hasWS;
  const controller = new AbortController();
  // WebTransport's attempt has a signal of its own: when another transport wins while its
  // handshake is still under way, it may finish (within the attempt's time, then closed) so
  // that the next reconnect knows whether WebTransport works here and was only slow once.
  const wtController = new AbortController();
  const attempts = [];
  const start = (open) => {
    const p = open(controller.signal);
    attempts.push(p);
    return p;
  };
  const openWT = () =>
    openWebTransport(
      withIdentity(config.webtransport, options, "webtransport"),
      config.certificateHashes,
      events,
      wtController.signal,
    );
  const openWS = (signal) => openWebSocket(withIdentity(config.websocket, options, "websocket"), events, signal);

  // SSE and long polling join the race once the direct transports failed or stayed silent
  // for FALLBACK_MS (unless one was forced).
  const fallback = !forced && (hasSse || hasPoll);
  const direct = [];
  const withFallback = (promises) => {
    direct.push(...promises);
    if (!fallback) return Promise.any(promises);
    const late = start(async (signal) => {
      await Promise.race([delay(FALLBACK_MS, signal), Promise.allSettled(direct)]);
      if (signal.aborted) throw new ChatError("aborted", "fallback: not needed");
      return dialPosted(config, options, events, null, state, signal);
    });
    return Promise.any([...promises, late]);
  };

  let winner;
  let wt = null;
  try {
    if (useWT && useWS) {
      wt = start(openWT);
      // The head start ends early if WebTransport fails outright. After a reconnect where
      // WebTransport lost the race, both start together.
      const headStart = state.webTransportLost ? 0 : options.headStart ?? HEAD_START_MS;
      const early = await Promise.race([
        wt.then((conn) => conn, () => null),
        delay(headStart).then(() => null),
      ]);
      if (early) {
        winner = early;
      } else {
        const ws = start(openWS);
        winner = await withFallback([wt, ws]);
      }
    } else if (useWT) {
      winner = await withFallback([start(openWT)]);
    } else if (useWS) {
      winner = await withFallback([start(openWS)]);
    } else {
      throw new ChatError("unsupported", "the server offers no transport this browser has");
    }
  } catch (e) {
    controller.abort();
    wtController.abort();
    if (e instanceof AggregateError) {
      throw busyAmong(e.errors) || new ChatError("unreachable", e.errors.map((x) => x.message).join("; "));
    }
    throw e;
  }
  // Close every other attempt, now or whenever it connects.
  controller.abort();
  for (const p of attempts) {
    p.then((conn) => { if (conn !== winner) conn.close(1000, "not needed"); }, () => {});
  }
  if (wt && winner.kind !== "webtransport") {
    // Lost the race: the next reconnect starts both at once (a network that drops UDP does
    // not pay the head start every time), unless WebTransport still connects now.
    state.webTransportLost = true;
    wt.then(() => { state.webTransportLost = false; }, () => {});
    setTimeout(() => wtController.abort(), ATTEMPT_TIMEOUT_MS);
  } else {
    wtController.abort();
    if (wt) state.webTransportLost = false;
  }
  return winner;
}

/**
 * SSE, then long polling (or the one `forced`): the first that connects; the other is
 * closed. Long polling starts once SSE failed or stayed silent for FALLBACK_MS — a proxy
 * that buffers streamed responses holds the stream's first event back, and the stream
 * never fails — or at once when long polling won the last time (`state.sseLost`).
 */
async function dialPosted(config, options, events, forced, state, signal) {
  const useSse = forced !== "longpoll" && typeof globalThis.EventSource === "function" && !!config.sse;
  const usePoll = forced !== "sse" && typeof globalThis.fetch === "function" && !!config.poll;
  if (!useSse && !usePoll) throw new ChatError("unreachable", "no transport could connect");
  const controller = new AbortController();
  const stop = () => controller.abort();
  signal?.addEventListener("abort", stop, { once: true });
  const attempts = [];
  const maxPost = config.limits?.maxPostBytes;
  const sse = useSse ? openSse(withIdentity(config.sse, options, "sse"), events, controller.signal, maxPost) : null;
  if (sse) attempts.push(sse);
  if (usePoll) {
    attempts.push((async () => {
      if (sse) {
        const wait = state?.sseLost ? 0 : FALLBACK_MS;
        const sseWon = await Promise.race([
          delay(wait, controller.signal).then(() => false),
          sse.then(() => true, () => false),
        ]);
        if (sseWon || controller.signal.aborted) throw new ChatError("aborted", "longpoll: not needed");
      }
      return openPoll(withIdentity(config.poll, options, "longpoll"), events, controller.signal, maxPost);
    })());
  }
  let winner;
  try {
    winner = await Promise.any(attempts);
  } catch (e) {
    const reasons = e.errors.filter((x) => x.code !== "aborted").map((x) => x.message);
    throw busyAmong(e.errors) || new ChatError("unreachable", reasons.join("; ") || "no transport could connect");
  } finally {
    signal?.removeEventListener("abort", stop);
    controller.abort();
  }
  for (const p of attempts) {
    p.then((conn) => { if (conn !== winner) conn.close(1000, "not needed"); }, () => {});
  }
  if (useSse && usePoll && state) state.sseLost = winner.kind !== "sse";
  return winner;
}

/**
 * One connection to the server and everything that lives as long as it does: dialing and
 * reconnecting, the keepalive, the pacing under the server's rate limit, the resume key,
 * and the rooms joined on it (one {@link Chat} each). Frames naming a room go to that
 * room's Chat; a reconnect joins every room again from where it was.
 */
class Link {
  constructor(options) {
    const server = options.server ?? (typeof location !== "undefined" ? location.origin : "");
    this.server = String(server).replace(/\/+$/, "");
    this.options = { ...options };
    /**
     * `"webtransport"`, `"websocket"`, `"sse"` or `"longpoll"` once connected; null before.
     * @type {import("./wtchat.js").Transport | null}
     */
    this.transport = null;
    /** connecting | connected | reconnecting | closed */
    this.status = "connecting";
    /** The server's limits (from `/wtchat/config`). */
    this.limits = null;
    /** The rooms on this connection, by name, in the order they were joined. */
    this.rooms = new Map();
    /** The resume key the server gave this link's first join (secret). */
    this._key = null;
    this._conn = null;
    this._gen = 0;
    this._idPrefix = `${randomId()}-`;
    this._idCounter = 0;
    this._written = 0; // requests written so far: the order they went on the wire in
    this._wire = []; // frames waiting for the rate limit, current connection only
    this._tokens = 0;
    this._tokensAt = 0;
    this._wireTimer = null;
    this._attempt = 0;
    this._attempting = false; // an attempt is joining its rooms: it handles a loss itself
    this._reconnectTimer = null;
    this._keepaliveTimer = null;
    this._lastHeard = 0;
    this._lastSent = 0;
    this._pingSentAt = 0;
    this._bye = null;
    this._dialState = { webTransportLost: false, sseLost: false };
    this._closedByUser = false;
    this._onOnline = () => {
      if (this.status === "reconnecting" && this._reconnectTimer) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
        this._attemptConnect();
      }
    };
    if (typeof addEventListener === "function") addEventListener("online", this._onOnline);
  }

  _nextId() {
    return `${this._idPrefix}${++this._idCounter}`;
  }

  _setStatus(status, details = {}) {
    this.status = status;
    for (const room of [...this.rooms.values()]) room._emit("status", { status, ...details });
  }

  /** A room joined on this connection: at once when connected, else with the next one. */
  join(chat) {
    this.rooms.set(chat.room, chat);
    if (this.status === "connected" && this._conn) this._joinNow(chat);
    return chat._ready;
  }

  /** Joins `chat`'s room on the connection there is. */
  _joinNow(chat) {
    chat._joinOn(this._gen).then(
      () => chat._onConnected(),
      (e) => {
        // Lost with the connection: the next one joins it again. Refused: it is left.
        const refused = e.code !== "lost" && e.code !== "aborted";
        if (refused && this.status !== "closed" && this.rooms.get(chat.room) === chat) chat._drop(e);
      },
    );
  }

  /** A room left: the server is told if it knows the room. */
  leave(chat) {
    if (this.rooms.get(chat.room) !== chat) return;
    this.rooms.delete(chat.room);
    if (this._conn) this._enqueue({ type: "leave", room: chat.room });
  }

  /** Leaves every room and closes the connection. */
  close() {
    if (this.status === "closed") return;
    this._closedByUser = true;
    const conn = this._conn;
    if (conn) {
      for (const room of this.rooms.values()) {
        if (room._joined) conn.write({ type: "leave", room: room.room });
      }
    }
    this._shutdown("closed by client", CloseCodes.NORMAL);
    // Give the leave frames a moment on the wire before closing.
    if (conn) setTimeout(() => conn.close(CloseCodes.NORMAL, "normal"), 50);
  }

  // ---- connection lifecycle ----

  async open() {
    this._setStatus("connecting");
    const timeout = this.options.timeout ?? ATTEMPT_TIMEOUT_MS;
    const deadline = Date.now() + timeout;
    for (;;) {
      try {
        await this._connectOnce(Math.max(1000, Math.min(ATTEMPT_TIMEOUT_MS, deadline - Date.now())));
        this._attempt = 0;
        this._startKeepalive();
        return;
      } catch (e) {
        const wait = this._backoff(e);
        if (!RETRY_CONNECT.includes(e.code) || Date.now() + wait > deadline) {
          this._shutdown(e.message, undefined, e.code);
          throw e;
        }
        const error = e.code === "busy" ? { error: e.code } : {};
        this._setStatus("connecting", { reason: e.message, attempt: this._attempt, delay: wait, ...error });
        await delay(wait);
        if (this.status === "closed") throw new ChatError("closed", "the chat is closed");
      }
    }
  }

  /** The wait before the next attempt: backoff, and at least what the server asked for. */
  _backoff(error) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 16);
    return Math.max(Math.round(base / 2 + (Math.random() * base) / 2), error?.retryAfter ?? 0);
  }

  async _fetchConfig() {
    let response;
    try {
      response = await fetch(`${this.server}/wtchat/config`, { cache: "no-store" });
    } catch (e) {
      throw new ChatError("unreachable", `config: ${e.message}`);
    }
    if (!response.ok) throw busyRefusal(response, "config") || new ChatError("unreachable", `config: HTTP ${response.status}`);
    return response.json();
  }

  /**
   * Tickets for this attempt, one per transport: the page's own credentialed request, so
   * the host's login (its cookies) decides who this is whatever the transport — browsers
   * send no cookies on a WebTransport CONNECT — or, with `token`, that token in a header
   * (no URL carries it). A refusal is final (`unauthorized`, with the reason); a failure
   * to reach the server is not, nor is too many requests (`rate_limited`: the next
   * attempt waits the server's `Retry-After`).
   * @param {string} url
   * @param {string | null} [token]
   */
  async _fetchTickets(url, token) {
    let response;
    try {
      const headers = token == null ? undefined : { Authorization: `Bearer ${token}` };
      response = await fetch(url, { method: "POST", credentials: "include", cache: "no-store", headers });
    } catch (e) {
      throw new ChatError("unreachable", `ticket: ${e.message}`);
    }
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      throw new ChatError("unauthorized", body.message || `ticket: HTTP ${response.status}`);
    }
    if (response.status === 429) {
      const seconds = Number(response.headers.get("retry-after")) || 1;
      throw new ChatError("rate_limited", "ticket: too many requests", { retryAfter: seconds * 1000 });
    }
    if (!response.ok) throw new ChatError("unreachable", `ticket: HTTP ${response.status}`);
    return (await response.json()).tickets;
  }

  /**
   * One attempt: config, tickets, transport, and a join of every room. Resolves once they
   * are answered: a room the server refuses is dropped (its `status` says why), unless it
   * refuses them all — then the attempt fails with the first one's error.
   */
  async _connectOnce(limit = ATTEMPT_TIMEOUT_MS) {
    const gen = ++this._gen;
    const attempt = (async () => {
      const config = await this._fetchConfig();
      if (gen !== this._gen) throw new ChatError("aborted", "superseded");
      this.limits = config.limits || null;
      const events = {
        frame: (conn, frame) => { if (conn === this._conn) this._onFrame(frame); },
        closed: (conn, info) => { if (conn === this._conn) this._onClosed(info); },
      };
      // Tickets, where the server issues them: for the page's token on a server of tokens
      // (sent in a header, so that only single-use tickets travel in URLs, where proxies
      // log them), else for the page's cookies when the host's hook decides (a token given
      // to such a server goes to its hook as it is).
      const forToken = config.ticketFor === "token";
      const tickets = config.ticket && (forToken || this.options.token == null)
        ? await this._fetchTickets(config.ticket, forToken ? this.options.token : null)
        : null;
      if (gen !== this._gen) throw new ChatError("aborted", "superseded");
      const conn = await dial(config, { ...this.options, tickets }, events, this._dialState);
      if (gen !== this._gen || this.status === "closed") {
        conn.close(1000, "not needed");
        throw new ChatError("aborted", "superseded");
      }
      this._conn = conn;
      this._bye = null;
      this._lastHeard = Date.now();
      this._tokens = this._burst();
      this._tokensAt = performance.now();
      this._wire = [];
      this._enqueue({ type: "hello", protocol: PROTOCOL });
      this._attempting = true;
      const rooms = [...this.rooms.values()];
      const answers = await Promise.allSettled(rooms.map((room) => room._joinOn(gen)));
      const refused = answers.filter((a) => a.status === "rejected").map((a) => a.reason);
      if (refused.length === rooms.length && refused.length) throw refused[0];
      if (refused.some((e) => e.code === "lost")) throw new ChatError("lost", "connection lost while joining");
      answers.forEach((a, i) => { if (a.status === "rejected") rooms[i]._drop(a.reason); });
      return conn;
    })();
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new ChatError("timeout", "connecting timed out")), limit);
    });
    try {
      const conn = await Promise.race([attempt, timeout]);
      this._attempting = false;
      this.transport = conn.kind;
      // Queued and unacknowledged requests, in order, before the status event, whose
      // handlers may send more. A room joined during the attempt joins now.
      for (const room of this.rooms.values()) {
        if (room._joinedOn === gen) room._onConnected();
        else this._joinNow(room);
      }
      this._setStatus("connected", { transport: conn.kind });
    } catch (e) {
      attempt.catch(() => {});
      this._attempting = false;
      if (gen === this._gen) {
        // Invalidate this attempt: if it is still under way, it closes what it opens.
        this._gen++;
        const conn = this._conn;
        this._conn = null;
        const aborted = new ChatError("aborted", "the attempt failed");
        for (const room of this.rooms.values()) room._onDisconnected(aborted);
        conn?.close(1000, "attempt failed");
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  _onClosed(info) {
    const conn = this._conn;
    this._conn = null;
    this._wire = [];
    this._stopKeepalive();
    const bye = this._bye;
    // A server that had no room for this connection said how long to wait (`busy`).
    const busy = bye?.reason === "busy"
      ? new ChatError("busy", bye.message || "the server is busy", { closeCode: bye.code, retryAfter: bye.retryAfter })
      : null;
    const refusal = bye && !bye.reconnect
      ? new ChatError(bye.reason || "closed", bye.message || `the server closed the connection (${bye.reason})`, { closeCode: bye.code })
      : busy || new ChatError("lost", "connection lost while joining");
    for (const room of this.rooms.values()) room._onDisconnected(refusal);
    if (this._attempting || this.status === "closed" || !conn) return;
    // Trust `bye` over the close code: WebTransport close codes do not reach browsers.
    const code = bye?.code ?? info.code;
    const reconnect = bye ? bye.reconnect : !(code === 1000 || (code >= 4400 && code < 5000));
    if (!reconnect) {
      this._shutdown(bye?.message || bye?.reason || info.reason || "closed by server", code, bye?.reason);
      return;
    }
    this._scheduleReconnect(bye?.reason || "connection lost", busy ?? undefined);
  }

  _scheduleReconnect(reason, error) {
    if (this.status === "closed" || this._reconnectTimer) return;
    const wait = this._backoff(error);
    this.transport = null;
    const busy = error?.code === "busy" ? { error: error.code } : {};
    this._setStatus("reconnecting", { reason, attempt: this._attempt, delay: wait, ...busy });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._attemptConnect();
    }, wait);
  }

  async _attemptConnect() {
    if (this.status === "closed") return;
    try {
      await this._connectOnce();
      this._attempt = 0;
      this._startKeepalive();
    } catch (e) {
      if (this.status === "closed" || e.code === "aborted") return;
      if (!RETRY_CONNECT.includes(e.code)) {
        this._shutdown(e.message, undefined, e.code);
        return;
      }
      this._scheduleReconnect(e.message, e);
    }
  }

  _shutdown(reason, code, errorCode) {
    if (this.status === "closed") return;
    this._gen++;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    clearTimeout(this._wireTimer);
    this._wireTimer = null;
    this._stopKeepalive();
    if (typeof removeEventListener === "function") removeEventListener("online", this._onOnline);
    const conn = this._conn;
    this._conn = null;
    if (conn && !this._closedByUser) conn.close(CloseCodes.NORMAL, "normal");
    this.transport = null;
    for (const room of this.rooms.values()) room._end(new ChatError(errorCode || "closed", reason));
    this._setStatus("closed", { reason, code, error: errorCode });
  }

  /** How often to ping when there is nothing else to send. */
  _pingEvery() {
    const idle = this.limits?.idleTimeoutMs;
    return idle > 0 ? Math.min(PING_EVERY_MS, Math.max(250, Math.floor(idle / 3))) : PING_EVERY_MS;
  }

  _startKeepalive() {
    this._stopKeepalive();
    const every = this._pingEvery();
    this._keepaliveTimer = setInterval(() => {
      if (!this._conn) return;
      const now = Date.now();
      const outstanding = this._pingSentAt > this._lastHeard;
      if (outstanding && now - this._pingSentAt > PING_TIMEOUT_MS) {
        // Nothing came back: the connection is dead even if the socket does not know yet.
        const conn = this._conn;
        this._onClosed({ reason: "keepalive timeout" });
        conn.close(1000, "keepalive timeout");
      } else if (now - this._lastSent >= every) {
        if (!outstanding) this._pingSentAt = now;
        this._enqueue({ type: "ping" });
      }
    }, Math.min(5000, Math.max(100, Math.floor(every / 4))));
  }

  _stopKeepalive() {
    clearInterval(this._keepaliveTimer);
    this._keepaliveTimer = null;
    this._pingSentAt = 0;
  }

  // ---- writing, under the server's rate limit ----

  _rate() {
    return Math.max(1, this.limits?.framesPerSecond || 20);
  }

  /**
   * The client's bucket: three quarters of the server's burst when it says (the rest
   * absorbs network jitter), else one second's worth (the server's default burst is two).
   */
  _burst() {
    const burst = this.limits?.frameBurst;
    return Math.max(1, burst ? Math.floor(burst * 0.75) : this._rate());
  }

  _refill() {
    const now = performance.now();
    const rate = this._rate();
    this._tokens = Math.min(this._burst(), this._tokens + ((now - this._tokensAt) / 1000) * rate);
    this._tokensAt = now;
  }

  _enqueue(frame) {
    this._wire.push(frame);
    this._pump();
  }

  _pump() {
    if (this._wireTimer) return;
    this._refill();
    while (this._wire.length && this._conn) {
      if (this._tokens < 1) {
        const wait = Math.ceil(((1 - this._tokens) / this._rate()) * 1000);
        this._wireTimer = setTimeout(() => { this._wireTimer = null; this._pump(); }, wait);
        return;
      }
      this._tokens -= 1;
      this._conn.write(this._wire.shift());
      this._lastSent = Date.now();
    }
  }

  /**
   * Writes a typing notice if the rate limit has tokens to spare: never let one cost a
   * message its place.
   */
  _writeEphemeral(frame) {
    this._refill();
    if (this._tokens < 2 || this._wire.length || !this._conn) return false;
    this._tokens -= 1;
    return this._conn.writeEphemeral(frame);
  }

  // ---- reading ----

  _onFrame(frame) {
    this._lastHeard = Date.now();
    if (!frame || typeof frame !== "object") return;
    if (frame.type === "hello") {
      // The version spoken on this connection.
      this.protocol = frame.protocol;
      return;
    }
    if (frame.type === "bye") {
      this._bye = {
        code: frame.code,
        reason: frame.reason,
        reconnect: !!frame.reconnect,
        message: frame.message,
        retryAfter: frame.retryAfterMs,
      };
      // The server's last word: close our side now rather than wait for its close (over
      // WebTransport it waits for ours, so that its close cannot overtake the `bye`).
      this._conn?.close(CloseCodes.NORMAL, "bye");
      return;
    }
    if (frame.type === "mention") {
      // This user was mentioned, in whatever room (one this connection has not joined, too):
      // news for the page, told once by each of its Chats, like `status`.
      if (typeof frame.room !== "string" || typeof frame.seq !== "number") return;
      /** @type {import("./wtchat.js").MentionEvent} */
      const mention = { room: frame.room, seq: frame.seq, from: String(frame.from ?? ""), text: String(frame.text ?? "") };
      if (typeof frame.sender === "string") mention.sender = frame.sender;
      for (const room of [...this.rooms.values()]) room._emit("mention", { ...mention });
      return;
    }
    if (frame.room !== undefined) {
      // Frames about a room this client left (or never joined) are old news; so is another
      // tab's read state in a room this connection has not joined (`read` frames name those
      // too: a page that wants badges for them joins them).
      this.rooms.get(frame.room)?._onFrame(frame);
      return;
    }
    // The server had no room for this connection: its `bye` follows, with the wait.
    if (frame.type === "error" && frame.code === "busy") return;
    if (frame.type === "error") {
      // Not about a room: a send's (by its id), else the connection's, told to every room.
      const owner = frame.id ? [...this.rooms.values()].find((room) => room._owns(frame.id)) : null;
      if (owner) owner._onFrame(frame);
      else for (const room of [...this.rooms.values()]) room._onError(frame);
    }
  }
}

/**
 * A joined room. {@link connect} makes the first; `chat.join(room)` more on the same
 * connection.
 * @implements {DeclaredChat}
 */
export class Chat {
  /**
   * @param {Link} link
   * @param {string} room
   * @param {import("./wtchat.js").JoinOptions} [options]
   */
  constructor(link, room, options = {}) {
    if (typeof room !== "string" || !room) throw new TypeError("a room is a non-empty string");
    this._link = link;
    /** The room's name. */
    this.room = room;
    /**
     * The display name (as the server has it once joined: the host's name for the user wins).
     * @type {string | null}
     */
    this.name = options.name ?? link.options.name ?? null;
    /**
     * The room's messages so far, in order, without duplicates.
     * @type {Message[]}
     */
    this.messages = [];
    /**
     * The room's members the client knows, `{id, name, sender}`, by id: everyone in a small room; in
     * a big one the first ones (the lowest ids), as many as `joined` and `membersPage()`
     * brought (see `membersComplete`).
     * @type {Member[]}
     */
    this.members = [];
    /** How many members the room has, this client included: exact, whatever the room's size. */
    this.memberCount = 0;
    /**
     * This connection as the room sees it, `{id, name, sender}`.
     * @type {import("./wtchat.js").Me | null}
     */
    this.me = null;
    /**
     * The room's epoch and the last sequence number seen in it.
     * @type {number | null}
     */
    this.epoch = null;
    this.seq = 0;
    /**
     * Who has read the room how far, by sender id: `{sender, name, seq}`, each read up to
     * message `seq` (this user too). From the server's `receipts` (small rooms only, as
     * members read) and from messages: the sender of message s has read up to s.
     * @type {Map<string, Reader>}
     */
    this.readers = new Map();

    this._name = options.name ?? link.options.name;
    this._maxMessages = options.maxMessages ?? link.options.maxMessages ?? DEFAULT_MAX_MESSAGES;
    this._handlers = new Map();
    this._joined = false; // joined on the current connection
    this._joinedOn = -1; // the connection (`link._gen`) whose join was answered last
    this._left = false;
    this._joinWaiter = null;
    this._pending = []; // unacknowledged sends, in order
    this._histories = []; // unanswered history requests, in order
    this._memberPages = []; // unanswered members requests, in order
    this._reactorPages = []; // unanswered reactions requests (who reacted), in order
    // `markRead()`'s marks: one on the wire at most, and one waiting, which a later call
    // moves forward rather than adding another (marks only move forward).
    this._reads = [];
    // The lines whose requests carry no id: the server's errors about them name only the room.
    this._idless = [this._histories, this._memberPages, this._reactorPages, this._reads];
    // The unread bookkeeping (the protocol's rule): the last-read mark; the messages from
    // others numbered after it, not deleted, received here (seq → whether it mentions this
    // user, in seq order), and how many of them mention; and the unread messages the last
    // `read` frame counted that are not among them (older than what came here, numbered up
    // to its `head`), and their mentions.
    this._lastRead = 0;
    /** @type {Map<number, boolean>} */
    this._kept = new Map();
    this._keptMentions = 0;
    this._outside = 0;
    this._outsideMentions = 0;
    this._readHead = 0;
    // Between a `joined` and the end of its replay, the count is the replay's guess (a
    // first join counts the whole recent history): no `read` event until the join's read
    // state (`joined.read`) settles it.
    this._readSettling = true;
    /** @type {Unread} What the last `read` event said (`chat.unread`). */
    this._unread = { count: 0, mentions: 0, lastRead: 0 };
    // What the client knows of the room's messages (this epoch), by seq: their text, their
    // reactions' counts as of the record numbered `at`, and this client's own reactions
    // (`mine`, from `joined`, `history` and the acks of its reactions; `mineAt`: the number
    // of the last of those). Held messages and others (history pages): see EXTRA_MESSAGE_STATES.
    /** @type {Map<number, {text?: string, edited?: number, counts: {reaction: string, count: number}[] | null, at: number, mine: Set<string>, mineAt: number}>} */
    this._states = new Map();
    // `members` is exactly the room's members with ids up to this: Infinity when it is
    // everyone, -Infinity when an update without lists left it in doubt.
    this._exactThrough = Infinity;
    this._lastTyping = 0;
    this._replayLeft = 0;
    // Settled by the first join: what `connect()` and `join()` resolve with.
    this._ready = new Promise((resolve, reject) => { this._readyWaiter = { resolve, reject }; });
    this._ready.catch(() => {});
    if (options.on) {
      for (const [event, handler] of Object.entries(options.on)) {
        this.on(/** @type {keyof ChatEvents} */ (event), /** @type {(event: any) => void} */ (handler));
      }
    }
  }

  /**
   * The server's HTTP base URL.
   * @returns {string}
   */
  get server() {
    return this._link.server;
  }

  /**
   * `"webtransport"`, `"websocket"`, `"sse"` or `"longpoll"` once connected; null before.
   * @returns {import("./wtchat.js").Transport | null}
   */
  get transport() {
    return this._left ? null : this._link.transport;
  }

  /**
   * connecting | connected | reconnecting | closed (a room left is closed).
   * @returns {import("./wtchat.js").Status}
   */
  get status() {
    return this._left ? "closed" : /** @type {import("./wtchat.js").Status} */ (this._link.status);
  }

  /**
   * The server's limits (from `/wtchat/config`).
   * @returns {import("./wtchat.js").Limits | null}
   */
  get limits() {
    return this._link.limits;
  }

  /**
   * Whether `members` is everyone in the room (`memberCount` of them).
   * @returns {boolean}
   */
  get membersComplete() {
    return this._exactThrough === Infinity;
  }

  /**
   * The `after` that continues `members` with `membersPage()`: the last id it has; undefined
   * when an update without lists left it in doubt (start again from the first page); null
   * when it is complete.
   * @returns {number | null | undefined}
   */
  get membersNext() {
    if (this.membersComplete) return null;
    return this._exactThrough === -Infinity ? undefined : this._exactThrough;
  }

  /**
   * This user's read state in the room, `{count, mentions, lastRead}`: the messages from
   * others numbered after its last-read mark and not deleted, how many of those mention it,
   * and the mark. As the last `read` event said: the server's read state (in every
   * `joined`, taken once its replay is in; `read` frames whenever the mark moves — here, in
   * another tab — and in answer to `markRead()`) settles it, and the client counts in what comes between: messages from others add to
   * it, one's own message reads the room up to it, a deletion takes one out. Zeros until the
   * first join's replay is in.
   * @returns {Unread}
   */
  get unread() {
    return this._unread;
  }

  /**
   * Subscribes to an event: `message`, `edited`, `deleted`, `reacted`, `presence`, `typing`,
   * `status`, `error`, `gap`, `read`, `receipts`, `mention`. Returns a function that
   * unsubscribes.
   * @template {keyof ChatEvents} E
   * @param {E} event
   * @param {(event: ChatEvents[E]) => void} handler
   * @returns {() => void}
   */
  on(event, handler) {
    let set = this._handlers.get(event);
    if (!set) this._handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  _emit(event, value) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(value);
      } catch (e) {
        // A broken handler must not break the client; report it without throwing here.
        setTimeout(() => { throw e; });
      }
    }
  }

  /**
   * Joins another room on this chat's connection (no new connection: a browser allows only
   * six per host over HTTP/1.1). Resolves with that room's Chat once joined and its recent
   * history is in; the same one if it is joined already. Rejects like `connect()`
   * (`too_many_rooms` past the server's `maxRoomsPerConnection`, `invalid_room`, `banned`...).
   * @param {string} room
   * @param {import("./wtchat.js").JoinOptions} [options]
   * @returns {Promise<Chat>}
   */
  join(room, options = {}) {
    const link = this._link;
    if (link.status === "closed") return Promise.reject(new ChatError("closed", "the chat is closed"));
    const joined = link.rooms.get(room);
    if (joined) return joined._ready;
    let chat;
    try {
      chat = new Chat(link, room, options);
    } catch (e) {
      return Promise.reject(e);
    }
    return link.join(chat);
  }

  /**
   * Leaves this room; the connection stays, with the chat's other rooms. Its queued
   * requests are rejected with `closed`, and its status is `closed`.
   * @returns {void}
   */
  leave() {
    if (this._left || this.status === "closed") return;
    this._link.leave(this);
    this._end(new ChatError("closed", "left the room"));
    this._left = true;
    this._emit("status", { status: "closed", reason: "left the room" });
  }

  /**
   * Sends a message. Resolves with `{seq, id}` once the server stored it; rejects with a
   * ChatError whose `code` is the server's error code (`text_too_long`, ...), or `closed`.
   * While reconnecting, sends are queued and delivered once, in order. The returned
   * promise has an `id` property: the client message id the `message` event will carry.
   * With `replyTo` (a message's `seq`), the message answers that one and carries its quote
   * (`unknown_reply` when the room has no such message, `message_deleted` when it was
   * deleted). With `mentions` (sender ids: a member's `sender`), the message mentions those
   * members: each gets a `mention` frame wherever it is connected, and counts it apart in its
   * unread state; at most 20 distinct ones (duplicates are sent once), else `invalid_mentions`.
   * @param {string} text
   * @param {import("./wtchat.js").SendOptions} [options]
   * @returns {Promise<Ack> & { readonly id: string }}
   */
  send(text, { replyTo, mentions } = {}) {
    // The client id, known at once: the `message` event for this send carries it. A send
    // refused here carries one too (never on the wire), as the declared type promises.
    const id = this._link._nextId();
    /** @type {(promise: Promise<Ack>) => Promise<Ack> & { readonly id: string }} */
    const withId = (promise) => Object.assign(promise, { id });
    if (this.status === "closed") {
      return withId(Promise.reject(new ChatError("closed", "the chat is closed")));
    }
    text = String(text ?? "");
    if (!text.trim()) return withId(Promise.reject(new ChatError("invalid_text", "text must not be empty")));
    const max = this.limits?.maxTextChars;
    if (max && text.length > max && [...text].length > max) {
      return withId(Promise.reject(new ChatError("text_too_long", `text is longer than ${max} characters`)));
    }
    // The message ends the others' "typing" display: the next keystroke may say so again.
    this._lastTyping = 0;
    if (replyTo !== undefined && !(Number.isSafeInteger(replyTo) && replyTo > 0)) {
      return withId(Promise.reject(new TypeError("send: replyTo must be a positive whole number")));
    }
    if (mentions !== undefined && !(Array.isArray(mentions) && mentions.every((m) => typeof m === "string"))) {
      return withId(Promise.reject(new TypeError("send: mentions must be an array of sender ids (strings)")));
    }
    // Each once: the server refuses a list that names one twice.
    const named = [...new Set(mentions ?? [])];
    if (named.length > MAX_MENTIONS) {
      return withId(Promise.reject(new ChatError("invalid_mentions", `a message may mention at most ${MAX_MENTIONS} members`)));
    }
    const malformed = named.find((m) => !SENDER_ID.test(m));
    if (malformed !== undefined) {
      return withId(Promise.reject(new ChatError("invalid_mentions", `not a sender id: ${JSON.stringify(malformed)}`)));
    }
    const frame = { type: "send", room: this.room, text, id };
    if (replyTo !== undefined) frame.replyTo = replyTo;
    if (named.length) frame.mentions = named;
    return withId(this._request(this._pending, frame, { id }));
  }

  /**
   * Replaces the text of message `seq`, one of this client's own, within the server's
   * edit window (`limits.editWindowMs`). Resolves with `{seq, id}` once stored (`seq`: the
   * edit's own number); every member's copy of the message then changes (an `edited`
   * event), and a member that was away gets the new text when it resumes. Rejects with a
   * ChatError: `not_yours`, `edit_window_passed`, `message_deleted`, `unknown_message`,
   * `text_too_long`, `invalid_text`... Queued while reconnecting, like sends.
   * @param {number} seq
   * @param {string} text
   * @returns {Promise<Ack>}
   */
  edit(seq, text) {
    text = String(text ?? "");
    if (!text.trim()) return Promise.reject(new ChatError("invalid_text", "text must not be empty"));
    return this._change({ type: "edit", seq, text });
  }

  /**
   * Deletes message `seq`, one of this client's own. Resolves with `{seq, id}` once stored;
   * every member's copy then goes (a `deleted` event), for members that were away too.
   * Rejects like `edit()` (`not_yours`, `message_deleted`, `unknown_message`...).
   * @param {number} seq
   * @returns {Promise<Ack>}
   */
  delete(seq) {
    return this._change({ type: "delete", seq });
  }

  /**
   * Adds this client's `reaction` (one emoji, or one of the host's `limits.reactionNames`)
   * to message `seq`. Resolves with `{seq, id, mine}` once stored (`seq`: the reaction's own
   * number; `mine`: all of this client's reactions on the message now); every member's copy
   * then counts it (a `reacted` event). Reacting twice with one reaction changes nothing and
   * resolves too. Rejects with a ChatError: `invalid_reaction`, `too_many_reactions` (the
   * message has `limits.reactionsPerMessage` distinct ones, or this member
   * `limits.reactionsPerMember` on it), `unknown_message`, `message_deleted`,
   * `rate_limited`... Queued with the sends while reconnecting.
   * @param {number} seq
   * @param {string} reaction
   * @returns {Promise<ReactionAck>}
   */
  react(seq, reaction) {
    return this._reaction("react", seq, reaction);
  }

  /**
   * Takes this client's `reaction` on message `seq` back. Resolves and rejects like
   * `react()`; taking back one it does not have changes nothing and resolves too.
   * @param {number} seq
   * @param {string} reaction
   * @returns {Promise<ReactionAck>}
   */
  unreact(seq, reaction) {
    return this._reaction("unreact", seq, reaction);
  }

  /**
   * @param {"react" | "unreact"} type
   * @param {number} seq
   * @param {string} reaction
   * @returns {Promise<ReactionAck>}
   */
  _reaction(type, seq, reaction) {
    if (typeof reaction !== "string" || !reaction) {
      return Promise.reject(new ChatError("invalid_reaction", "a reaction is one emoji or a name the server lists"));
    }
    return /** @type {Promise<ReactionAck>} */ (this._change({ type, seq, reaction }));
  }

  /**
   * One page of who reacted to message `seq`: up to `limit` (the server's default and
   * maximum: 100) reactions numbered above `after` (default: from the first), in the order
   * they were made. Resolves with `{reactors, next}`: `next` is the `after` of the
   * following page, null at the end. Rejects with a ChatError (`unknown_message`,
   * `message_deleted`, `not_joined`, `closed`); with a TypeError when `seq` or `limit` is
   * not a positive whole number or `after` not a whole number. Answered in the order asked;
   * while reconnecting they wait.
   * @param {number} seq
   * @param {import("./wtchat.js").ReactorsOptions} [options]
   * @returns {Promise<import("./wtchat.js").ReactorsPage>}
   */
  reactions(seq, { after, limit } = {}) {
    if (!Number.isSafeInteger(seq) || seq < 1) {
      return Promise.reject(new TypeError("reactions: seq must be a positive whole number"));
    }
    return this._ask(this._reactorPages, { type: "reactions", room: this.room, seq, after, limit }, { after: 0, limit: 1 });
  }

  /** Queues a change to message `frame.seq` with the sends, in their order. */
  _change(frame) {
    if (this.status === "closed") return Promise.reject(new ChatError("closed", "the chat is closed"));
    if (!Number.isSafeInteger(frame.seq) || frame.seq < 1) {
      return Promise.reject(new TypeError(`${frame.type}: seq must be a positive whole number`));
    }
    const id = this._link._nextId();
    return this._request(this._pending, { ...frame, room: this.room, id }, { id });
  }


  /**
   * One page of the room's older messages: up to `limit` (the server's default and maximum:
   * 100) with sequence numbers below `before` (default: the newest), oldest first, in the
   * shape of `message` events. Resolves with `{messages, more}`, `more` saying whether
   * older ones remain; rejects with a ChatError carrying the server's error code
   * (`not_joined`, `storage_failed`), or `closed`. Requests are answered in the order they
   * were made; while reconnecting they wait, like sends. `chat.messages` is left as it is.
   * @param {import("./wtchat.js").HistoryOptions} [options]
   * @returns {Promise<import("./wtchat.js").HistoryPage>}
   */
  history({ room = this.room, before, limit } = {}) {
    return this._ask(this._histories, { type: "history", room, before, limit }, { before: 1, limit: 1 });
  }

  /**
   * One page of the room's members: up to `limit` (the server's default and maximum: 100)
   * with ids above `after` (default: from the lowest), by id. Resolves with
   * `{members, count, next}`: `next` is the `after` of the following page, null at the end.
   * The page goes into `chat.members` where it continues what the client is sure of (the
   * first page, or `after` up to `membersNext`), without a `presence` event. Rejects like
   * `history()`. Requests are answered in the order they were made; while reconnecting
   * they wait.
   * @param {import("./wtchat.js").MembersPageOptions} [options]
   * @returns {Promise<import("./wtchat.js").MembersPage>}
   */
  membersPage({ after, limit } = {}) {
    return this._ask(this._memberPages, { type: "members", room: this.room, after, limit }, { after: 0, limit: 1 });
  }

  /**
   * Queues a question about the room on `line` (`history`, `members`), unless the chat is
   * closed, `frame.room` is not this chat's, or one of the numbers named in `least` is given
   * but is not a whole number of at least that much (a TypeError).
   */
  _ask(line, frame, least) {
    if (this.status === "closed") {
      return Promise.reject(new ChatError("closed", "the chat is closed"));
    }
    for (const [name, min] of Object.entries(least)) {
      const value = frame[name];
      if (value !== undefined && !(Number.isSafeInteger(value) && value >= min)) {
        const what = min > 0 ? "a positive whole number" : "a whole number, 0 or more";
        return Promise.reject(new TypeError(`${frame.type}: ${name} must be ${what}`));
      }
    }
    if (frame.room !== this.room) {
      return Promise.reject(new ChatError("not_joined", `this chat is in ${this.room}, not ${frame.room}`, { room: frame.room }));
    }
    return this._request(line, frame);
  }

  /**
   * Queues a frame that the server answers, on `line` (sends, history or members
   * requests): each line has one request on the wire at a time, in order, sent again on
   * every new connection until answered.
   */
  _request(line, frame, fields = {}) {
    return new Promise((resolve, reject) => {
      line.push({ ...fields, frame, resolve, reject, gen: -1, retries: 0, held: false });
      if (this._joined) this._writeNext(line);
    });
  }

  /**
   * Says "I am typing" to the room; throttled, and dropped when not connected.
   * @returns {boolean}
   */
  typing() {
    const now = Date.now();
    if (!this._joined || now - this._lastTyping < TYPING_INTERVAL_MS) return false;
    // An error about a typing notice would read as one about a history or members request
    // (none has an id); notices may be lost anyway.
    if (this._idless.some((line) => this._onWire(line))) return false;
    if (!this._link._writeEphemeral({ type: "typing", room: this.room })) return false;
    this._lastTyping = now;
    return true;
  }

  /**
   * Leaves every room of this chat's connection and closes it. Queued sends are rejected.
   * @returns {void}
   */
  close() {
    this._link.close();
  }

  /**
   * Whether a message was sent by this client: it carries this client's public sender id
   * (the server keeps it across reconnects, through the resume key), or one of its ids.
   * @param {{ sender?: string, id?: string }} message
   * @returns {boolean}
   */
  isMine(message) {
    if (message.sender != null && message.sender === this.me?.sender) return true;
    return typeof message.id === "string" && message.id.startsWith(this._link._idPrefix);
  }

  /**
   * Whether a message mentions this user: its `mentions` hold this connection's sender id
   * (`me.sender`, the same in every tab of a signed-in user).
   * @param {{ mentions?: readonly string[] }} message
   * @returns {boolean}
   */
  mentionsMe(message) {
    const me = this.me?.sender;
    return !!me && Array.isArray(message?.mentions) && message.mentions.includes(me);
  }

  /**
   * Marks the room read up to message `seq` (default: the newest the chat has seen), for
   * this user everywhere: the server keeps the mark, answers with a `read` frame (a `read`
   * event here) and tells the user's other tabs. Never done on the client's own: a page
   * calls it for what it has shown. Marks only move forward: a `seq` at or below the mark,
   * or below one already asked for, changes nothing and sends nothing (returns false).
   * While reconnecting the mark waits and goes out once joined again; marks asked for
   * meanwhile make one. A server error about it is an `error` event. Throws a TypeError
   * when `seq` is not a whole number.
   * @param {number} [seq]
   * @returns {boolean}
   */
  markRead(seq = this.seq) {
    if (!Number.isSafeInteger(seq) || seq < 0) throw new TypeError("markRead: seq must be a whole number");
    if (this.status === "closed" || seq <= this._lastRead) return false;
    const line = this._reads;
    // The one not on the wire yet, if there is one: it asks for more instead.
    const waiting = line.length > 1 || (line.length === 1 && !this._onWire(line)) ? line[line.length - 1] : null;
    if (waiting) {
      if (seq <= waiting.frame.seq) return false;
      waiting.frame = { ...waiting.frame, seq };
      return true;
    }
    if (line.length && seq <= line[0].frame.seq) return false;
    line.push({
      frame: { type: "read", room: this.room, seq },
      resolve: () => {},
      // No promise to reject: a refusal is news for the page, leaving the room is not.
      reject: (/** @type {ChatError} */ e) => { if (e.code !== "closed") this._emit("error", e); },
      gen: -1,
      retries: 0,
      held: false,
    });
    if (this._joined) this._writeNext(line);
    return true;
  }

  // ---- joining, on each connection ----

  /**
   * Writes this room's join on the connection `gen` (resuming from the last message seen);
   * resolves once joined and the replayed history is in.
   */
  _joinOn(gen) {
    const link = this._link;
    const joined = new Promise((resolve, reject) => {
      this._joinWaiter = { resolve: () => { this._joinedOn = gen; resolve(); }, reject };
    });
    const join = { type: "join", room: this.room };
    if (this._name != null) join.name = this._name;
    // The resume key of the link's first join: retried sends are recognised as ours, and
    // our messages stay ours.
    if (link._key) join.key = link._key;
    if (this.epoch != null) {
      join.since = this.seq;
      join.epoch = this.epoch;
    }
    link._enqueue(join);
    return joined;
  }

  /** Joined on this connection: queued and unanswered requests go out, in order. */
  _onConnected() {
    if (this._joined || this._left || this._joinedOn !== this._link._gen) return;
    this._joined = true;
    this._readyWaiter.resolve(this);
    for (const line of [this._pending, ...this._idless]) this._writeNext(line);
  }

  /** The connection is gone: a join under way fails with `error`. */
  _onDisconnected(error) {
    this._joined = false;
    const waiter = this._joinWaiter;
    this._joinWaiter = null;
    waiter?.reject(error);
  }

  /**
   * The room is over for this chat: the server refused it on a new connection, or the
   * host took this connection out of it (a kick, a ban). It is left, and says why.
   */
  _drop(error) {
    this._link.rooms.delete(this.room);
    this._end(error);
    this._left = true;
    this._emit("error", error);
    this._emit("status", { status: "closed", reason: error.message, error: error.code, code: error.closeCode });
  }

  /** Every request still waiting fails with `error`'s code. */
  _end(error) {
    this._joined = false;
    this._readyWaiter.reject(error);
    /** @type {[any[], string][]} */
    const lines = [
      [this._pending, "the message was sent"],
      [this._histories, "history arrived"],
      [this._memberPages, "the members arrived"],
      [this._reactorPages, "the reactions arrived"],
      [this._reads, "the room was marked read"],
    ];
    for (const [line, what] of lines) {
      for (const request of line.splice(0)) request.reject(new ChatError("closed", `the chat closed before ${what}`));
    }
  }

  // ---- requests on the wire ----

  /**
   * Writes the oldest request of `line` unless it is on the wire already: one at a time, so
   * that one the server drops (`rate_limited`) and the client retries can never be stored
   * (or answered) after a later one. Each goes out on its answer's heels.
   */
  _writeNext(line) {
    const link = this._link;
    const head = line[0];
    if (!head || !this._joined || !link._conn || head.held || head.gen === link._gen) return;
    head.gen = link._gen;
    head.written = ++link._written;
    link._enqueue(head.frame);
  }

  /** Whether the oldest request of `line` is on the wire of this connection. */
  _onWire(line) {
    return line.length > 0 && line[0].gen === this._link._gen;
  }

  /** Of `lines`, the one whose request on the wire went first, if any has one there. */
  _oldestOnWire(lines) {
    let oldest = null;
    for (const line of lines) {
      if (this._onWire(line) && (!oldest || line[0].written < oldest[0].written)) oldest = line;
    }
    return oldest;
  }

  /**
   * Sends the oldest request of `line` again after a pause, in its place (its id keeps a
   * send idempotent); false when it was retried enough already.
   */
  _retryLater(line) {
    const head = line[0];
    if (head.retries >= MAX_RETRIES) return false;
    head.retries += 1;
    head.gen = -1;
    head.held = true;
    setTimeout(() => {
      head.held = false;
      this._writeNext(line);
    }, 1000 * head.retries);
    return true;
  }

  /** Settles the oldest request of `line` and writes the next. */
  _settle(line, settle) {
    settle(line.shift());
    this._writeNext(line);
  }

  /** Whether `id` is one of this room's unacknowledged sends. */
  _owns(id) {
    return this._pending.some((p) => p.id === id);
  }

  // ---- reading ----

  _onFrame(frame) {
    switch (frame.type) {
      case "joined": return this._onJoined(frame);
      case "message": return this._onMessage(frame);
      case "ack": return this._onAck(frame);
      case "history": return this._onHistory(frame);
      case "members": return this._onMembers(frame);
      case "reactions": return this._onReactors(frame);
      case "update": return this._onChanged(frame);
      case "presence": return this._onPresence(frame);
      case "read": return this._onRead(frame);
      case "receipts": return this._onReceipts(frame);
      case "typing":
        if (frame.from) this._emit("typing", { room: this.room, from: frame.from });
        return;
      case "error": return this._onError(frame);
      case "left":
        // With a code, the host removed this connection from the room (a kick, a ban): it
        // ends here, and the other rooms go on. From its last room the server closes the
        // connection too, and that `bye` says it for the whole chat.
        if (frame.code && this._link.rooms.size > 1) {
          this._drop(new ChatError(frame.reason || "kicked", "the host removed you from this room", { closeCode: frame.code }));
        }
        return;
      default:
        return;
    }
  }

  _onJoined(frame) {
    const newEpoch = this.epoch != null && frame.epoch !== this.epoch;
    if (frame.gap || newEpoch) {
      this._emit("gap", { room: this.room, epoch: frame.epoch, previousEpoch: this.epoch, since: this.seq });
    }
    if (newEpoch || this.epoch == null) this.seq = 0;
    // The read state is the server's again once the replay is in: `joined.read` counts the
    // messages up to its head, the replayed ones among them (taken at the replay's end).
    this._readSettling = true;
    this._joinRead = frame.read && typeof frame.read.seq === "number" ? frame.read : null;
    if (newEpoch) {
      // A recreated room: marks, receipts and unread messages were of the old one's numbers.
      this._lastRead = 0;
      this._readHead = 0;
      this._outside = this._outsideMentions = 0;
      // A mark asked for while away names the old room's numbers: sent now, it would mark
      // the new room read up to its newest. (None is on this connection's wire yet.)
      for (const request of this._reads.splice(0)) request.resolve();
      if (this.readers.size) {
        this.readers.clear();
        this._emit("receipts", { room: this.room, changed: [], readers: this.readers });
      }
    }
    // Past a gap the unread messages held may have been deleted unseen; the join's read
    // state counts what is unread up to its head without them.
    if (frame.gap || newEpoch) this._dropKept(Infinity);
    // Past a gap in the same room, the messages held may be stale (a change to them may not
    // have been replayed): they go, and the replay brings the newest; page back for more.
    if (frame.gap && !newEpoch) this.messages = [];
    // What was known of the messages is of another room, or stale, past a gap.
    if (frame.gap || newEpoch) this._states.clear();
    this.epoch = frame.epoch;
    // This member's own reactions on the messages of the recent history: what the replay's
    // messages carry, and news for the ones held (made elsewhere, by this user's other tab).
    this._takeMine(frame.mine);
    this._refreshHeld();
    this.me = frame.you ? { id: frame.you.id, name: frame.you.name, sender: frame.you.sender } : null;
    // Secret: kept for this link's own reconnects and joins, never shown or sent anywhere else.
    if (frame.key) this._link._key = frame.key;
    if (this.me) this.name = this.me.name;
    this.memberCount = frame.count;
    this._setMembers(frame.members, frame.count);
    this._emitPresence("sync", this.me);
    // The join completes once the replayed history (the next `replay` frames: messages,
    // and updates of older ones) is in; the room is then seen up to the join's head.
    this._head = frame.seq;
    this._replayLeft = frame.replay || 0;
    if (!this._replayLeft) this._replayed();
  }

  /** A frame of the join's replay came; after the last, the join is done. */
  _replaying() {
    if (this._replayLeft > 0 && --this._replayLeft === 0) queueMicrotask(() => this._replayed());
  }

  _replayed() {
    if (typeof this._head === "number") this.seq = Math.max(this.seq, this._head);
    const read = this._joinRead;
    this._joinRead = null;
    if (read) this._takeRead(read);
    else if (this._readSettling) {
      // A server that keeps no read state: the counts are this client's own.
      this._readSettling = false;
      this._unreadChanged();
    }
    this._joinDone();
  }

  _joinDone() {
    const waiter = this._joinWaiter;
    this._joinWaiter = null;
    waiter?.resolve();
  }

  _onMessage(frame) {
    // Dedupe by (epoch, seq): within an epoch the server sends in sequence order, so
    // anything at or below the last seen number is a duplicate.
    const replayed = this._replayLeft > 0;
    this._replaying();
    if (typeof frame.seq !== "number" || frame.seq <= this.seq) return;
    this.seq = frame.seq;
    // A replayed message is in its current state: its counts are as of the join's head.
    this._know(frame, replayed && typeof this._head === "number" ? this._head : frame.seq);
    const message = this._message(frame);
    this.messages.push(message);
    if (this.messages.length > this._maxMessages) this.messages.splice(0, this.messages.length - this._maxMessages);
    this._emit("message", message);
    // Its sender has read the room up to it.
    if (typeof frame.sender === "string") this._readUpTo([{ sender: frame.sender, name: frame.from, seq: frame.seq }]);
    if (message.mine) {
      // One's own message reads the room up to it (the server marks it so; no frame says it).
      if (frame.seq > this._lastRead) this._lastRead = frame.seq;
      this._dropKept(this._lastRead);
      // What the last `read` frame counted is numbered up to its head: read too, if this is after.
      if (frame.seq >= this._readHead) this._outside = this._outsideMentions = 0;
    } else if (frame.seq > this._lastRead) {
      const mentioned = this.mentionsMe(message);
      this._kept.set(frame.seq, mentioned);
      if (mentioned) this._keptMentions += 1;
    }
    this._unreadChanged();
  }

  /** Forgets the unread messages held numbered up to `seq` (they are in seq order). */
  _dropKept(seq) {
    for (const [kept, mentioned] of this._kept) {
      if (kept > seq) break;
      this._kept.delete(kept);
      if (mentioned) this._keptMentions -= 1;
    }
  }

  /**
   * The server's read state in this room (`{seq, unread, mentions, head}`): in each `joined`,
   * when the mark moved (another tab, the host), or in answer to `markRead()`. Its counts
   * cover messages numbered up to `head`; the unread ones held numbered after it are not in
   * them and count on top.
   */
  _onRead(frame) {
    if (typeof frame.seq !== "number") return;
    // Answered in order: this answers the mark on the wire (another tab's news may come
    // first; the answer that follows is then news like it).
    if (this._onWire(this._reads)) this._settle(this._reads, (request) => request.resolve());
    // Another tab's news during a join's replay: the join's own state is older.
    this._joinRead = null;
    this._takeRead(frame);
  }

  /** Takes the server's read state (a `read` frame, or a join's) as the unread counts. */
  _takeRead(frame) {
    const head = typeof frame.head === "number" ? frame.head : this.seq;
    this._lastRead = frame.seq;
    this._dropKept(frame.seq);
    let within = 0;
    let withinMentions = 0;
    for (const [seq, mentioned] of this._kept) {
      if (seq > head) break;
      within += 1;
      if (mentioned) withinMentions += 1;
    }
    this._outside = Math.max(0, (Number(frame.unread) || 0) - within);
    this._outsideMentions = Math.max(0, (Number(frame.mentions) || 0) - withinMentions);
    this._readHead = head;
    this._readSettling = false;
    this._unreadChanged();
  }

  /** The unread state changed, perhaps: a `read` event when what it says differs. */
  _unreadChanged() {
    if (this._readSettling) return;
    const count = this._outside + this._kept.size;
    const mentions = this._outsideMentions + this._keptMentions;
    const lastRead = this._lastRead;
    const was = this._unread;
    if (was.count === count && was.mentions === mentions && was.lastRead === lastRead) return;
    this._unread = { count, mentions, lastRead };
    this._emit("read", { room: this.room, count, mentions, lastRead });
  }

  /** A small room's members read further (`receipts`: those whose marks moved, with their newest). */
  _onReceipts(frame) {
    if (!Array.isArray(frame.readers)) return;
    this._readUpTo(frame.readers);
  }

  /**
   * Members read up to the marks given (`[{sender, name, seq}]`): `readers` takes the ones
   * further than it knew, with a `receipts` event if any was.
   */
  _readUpTo(list) {
    /** @type {Reader[]} */
    const changed = [];
    for (const r of list) {
      if (typeof r?.sender !== "string" || !Number.isSafeInteger(r.seq)) continue;
      const known = this.readers.get(r.sender);
      if (known && known.seq >= r.seq) continue;
      const reader = { sender: r.sender, name: String(r.name ?? known?.name ?? ""), seq: r.seq };
      this.readers.set(r.sender, reader);
      changed.push(reader);
    }
    if (changed.length) this._emit("receipts", { room: this.room, changed, readers: this.readers });
  }

  /**
   * Remembers message `frame` (a `message` frame, or one of a history page) as it stands as
   * of the record numbered `at`.
   */
  _know(frame, at) {
    const state = this._state(frame.seq);
    state.text = frame.text;
    state.edited = frame.edited;
    state.counts = Array.isArray(frame.reactions) ? frame.reactions : [];
    state.at = Math.max(state.at, at);
  }

  /** What the client knows of message `seq`, made empty on first use. */
  _state(seq) {
    let state = this._states.get(seq);
    if (!state) {
      state = { counts: null, at: 0, mine: new Set(), mineAt: 0 };
      this._states.set(seq, state);
      this._trimStates();
    }
    return state;
  }

  /** Forgets the messages known longest (not the ones held) past EXTRA_MESSAGE_STATES. */
  _trimStates() {
    const max = this._maxMessages + EXTRA_MESSAGE_STATES;
    if (this._states.size <= max) return;
    const held = new Set(this.messages.map((m) => m.seq));
    for (const seq of this._states.keys()) {
      if (this._states.size <= max) break;
      if (!held.has(seq)) this._states.delete(seq);
    }
  }

  /** `joined.mine` or `history.mine` (`{"12": ["👍"]}`): this member's own reactions, by seq. */
  _takeMine(mine) {
    if (!mine || typeof mine !== "object") return;
    for (const [key, list] of Object.entries(mine)) {
      const seq = Number(key);
      if (Number.isSafeInteger(seq) && Array.isArray(list)) this._state(seq).mine = new Set(list.map(String));
    }
  }

  /** The held messages whose reactions now read otherwise (their `mine`) change, each with a `reacted` event. */
  _refreshHeld() {
    this.messages.forEach((m, i) => {
      if (m.epoch !== this.epoch) return;
      const state = this._states.get(m.seq);
      if (!state?.counts) return;
      const reactions = reactionList(state.counts, state.mine);
      if (sameReactions(m.reactions, reactions)) return;
      const message = { ...m, reactions };
      this.messages[i] = message;
      this._emit("reacted", { room: this.room, epoch: this.epoch, seq: m.seq, reactions, message });
    });
  }

  /** A `message` frame as the `message` event and `history()` give it. */
  _message(frame) {
    return {
      room: this.room,
      epoch: this.epoch,
      seq: frame.seq,
      from: frame.from,
      sender: frame.sender,
      text: frame.text,
      time: frame.time,
      edited: frame.edited,
      replyTo: quote(frame.replyTo),
      mentions: mentionList(frame.mentions),
      id: frame.id,
      mine: this.isMine(frame),
      reactions: reactionList(frame.reactions, this._states.get(frame.seq)?.mine),
    };
  }

  _onAck(frame) {
    const i = this._pending.findIndex((p) => p.id === frame.id);
    if (i < 0) return;
    const [pending] = this._pending.splice(i, 1);
    const request = pending.frame;
    if ((request.type === "react" || request.type === "unreact") && Array.isArray(frame.mine)) {
      // Shown before the promise resolves: `chat.messages` says it by then.
      this._onMine(request.seq, frame.mine.map(String), frame.seq);
      pending.resolve({ seq: frame.seq, id: pending.id, mine: frame.mine.map(String) });
    } else {
      pending.resolve({ seq: frame.seq, id: pending.id });
    }
    this._writeNext(this._pending);
  }

  /**
   * A reaction of this client's to message `seq` was stored (`at`: its number): `mine` is
   * all of them on it now. Its counts count it at once, unless the update that does came
   * first (in a big room updates come about a second later, coalesced).
   */
  _onMine(seq, mine, at) {
    const state = this._state(seq);
    const before = state.mine;
    const after = new Set(mine);
    state.mine = after;
    if (typeof at === "number") state.mineAt = Math.max(state.mineAt, at);
    if (!state.counts) return; // a message the client knows nothing of: no counts to show
    if (typeof at === "number" && state.at < at) state.counts = countIn(state.counts, before, after);
    const reactions = reactionList(state.counts, after);
    const i = this.messages.findIndex((m) => m.epoch === this.epoch && m.seq === seq);
    const held = i >= 0 ? this.messages[i] : null;
    if (held && sameReactions(held.reactions, reactions)) return;
    const message = held ? { ...held, reactions } : null;
    if (message) this.messages[i] = message;
    this._emit("reacted", { room: this.room, epoch: this.epoch, seq, reactions, message });
  }

  _onHistory(frame) {
    // One request on the wire at a time: this answers the oldest.
    if (!this._onWire(this._histories)) return;
    const page = Array.isArray(frame.messages) ? frame.messages : [];
    // The page is the messages' current state, and says which reactions are this member's.
    const mine = frame.mine && typeof frame.mine === "object" ? frame.mine : {};
    for (const m of page) {
      if (typeof m?.seq !== "number") continue;
      this._know(m, this.seq);
      this._state(m.seq).mine = new Set(Array.isArray(mine[m.seq]) ? mine[m.seq].map(String) : []);
    }
    const messages = page.map((m) => this._message(m));
    this._settle(this._histories, (request) => request.resolve({ messages, more: !!frame.more }));
  }

  _onReactors(frame) {
    // One request on the wire at a time, answered in order: this answers the oldest, if it
    // asked about this message.
    if (!this._onWire(this._reactorPages) || this._reactorPages[0].frame.seq !== frame.seq) return;
    const reactors = (Array.isArray(frame.reactors) ? frame.reactors : []).map(reactor);
    const next = typeof frame.next === "number" ? frame.next : null;
    this._settle(this._reactorPages, (request) => request.resolve({ reactors, next }));
  }

  /**
   * Message `seq` changed (`at`: the change's number): a new text, reactions, or deleted.
   * A live frame carries the fields that changed (an edit no `reactions`, a reaction maybe
   * no `text`); a replayed one, after a reconnect, the message's whole current state, once
   * per message. What differs from what the client knew is the news: an `edited` event, a
   * `reacted` one, or both.
   */
  _onChanged(frame) {
    const replayed = this._replayLeft > 0;
    this._replaying();
    if (typeof frame.seq !== "number") return;
    // Live, it moves the position; replayed, the join's head does once the replay is in.
    if (!replayed && typeof frame.at === "number") this.seq = Math.max(this.seq, frame.at);
    const i = this.messages.findIndex((m) => m.epoch === this.epoch && m.seq === frame.seq);
    if (frame.deleted) {
      this._states.delete(frame.seq);
      // An unread message gone: one fewer to read.
      if (this._kept.has(frame.seq)) {
        if (this._kept.get(frame.seq)) this._keptMentions -= 1;
        this._kept.delete(frame.seq);
      }
      if (i >= 0) this.messages.splice(i, 1);
      // The replies to it quote it as deleted from now on, as the server's copies do.
      this.messages = this.messages.map((m) =>
        m.replyTo?.seq === frame.seq ? { ...m, replyTo: { ...m.replyTo, text: "", deleted: true } } : m);
      this._emit("deleted", { room: this.room, epoch: this.epoch, seq: frame.seq });
      this._unreadChanged();
      return;
    }
    // The fields present changed (a live edit has no `reactions`, a live reaction may have
    // no `text`); a replay's update has them all.
    const held = i >= 0 ? this.messages[i] : null;
    const known = this._states.get(frame.seq);
    const state = this._state(frame.seq);
    // Of a message the client knows nothing of (neither held nor in a page it fetched), it
    // cannot tell what changed: a text is an edit, reactions are news.
    const before = held ?? (known?.text !== undefined ? known : null);
    const editTime = frame.edited !== undefined ? frame.edited : before?.edited;
    const edited = typeof frame.text === "string" && (!before || before.text !== frame.text || before.edited !== editTime);
    if (typeof frame.text === "string") {
      state.text = frame.text;
      state.edited = editTime;
    }
    /** @type {Reaction[] | null} */
    let reactions = null;
    if (Array.isArray(frame.reactions)) {
      const was = held ? held.reactions : known?.counts ? reactionList(known.counts, known.mine) : null;
      const at = typeof frame.at === "number" ? frame.at : 0;
      // An update at or after this client's last reaction here knows of it: a reaction
      // nobody has any more is not this client's either.
      if (at >= state.mineAt) {
        for (const r of [...state.mine]) {
          if (!frame.reactions.some((/** @type {any} */ x) => x?.reaction === r)) state.mine.delete(r);
        }
      }
      state.counts = frame.reactions;
      state.at = Math.max(state.at, at);
      const now = reactionList(state.counts, state.mine);
      if (!was || !sameReactions(was, now)) reactions = now;
    }
    if (!edited && !reactions) return;
    /** @type {Message | null} */
    let message = null;
    if (held) {
      message = { ...held };
      if (edited) Object.assign(message, { text: frame.text, edited: editTime });
      if (reactions) message.reactions = reactions;
      this.messages[i] = message;
    }
    if (edited) {
      this._emit("edited", { room: this.room, epoch: this.epoch, seq: frame.seq, text: frame.text, edited: editTime, message });
    }
    if (reactions) this._emit("reacted", { room: this.room, epoch: this.epoch, seq: frame.seq, reactions, message });
  }

  _onMembers(frame) {
    // One request on the wire at a time: this answers the oldest.
    if (!this._onWire(this._memberPages)) return;
    const members = (Array.isArray(frame.members) ? frame.members : []).map(member);
    const next = frame.next ?? null;
    this.memberCount = frame.count;
    this._settle(this._memberPages, (request) => {
      this._mergeMembers(request.frame.after, members, next);
      request.resolve({ members, count: frame.count, next });
    });
  }

  _onPresence(frame) {
    this.memberCount = frame.count;
    if (frame.event === "update") return this._onUpdate(frame);
    if (frame.event === "sync") {
      // A big room became small again: everyone, and presence frames from now on.
      this._setMembers(frame.members, frame.count);
      return this._emitPresence("sync", null);
    }
    // A small room. One member, or several that left together (one frame for all): an
    // event for each.
    const list = Array.isArray(frame.members) ? frame.members : frame.member ? [frame.member] : [];
    for (const m of list.map(member)) {
      if (frame.event === "join") this._addMember(m);
      else if (frame.event === "leave") this.members = this.members.filter((x) => x.id !== m.id);
      this._emitPresence(frame.event, m);
    }
  }

  /** A big room's periodic news: the count, and who came and went since the last one. */
  _onUpdate(frame) {
    if (!Array.isArray(frame.joined) && !Array.isArray(frame.left)) {
      // Counts only: who came and went is unknown, so nothing of the list is sure any more.
      this._exactThrough = -Infinity;
      return this._emitPresence("update", null);
    }
    const joined = (frame.joined || []).map(member);
    const left = (frame.left || []).map(member);
    // Joins first: one who came and went within the interval (perhaps into a page fetched
    // meanwhile) is gone.
    for (const m of joined) this._addMember(m);
    const gone = new Set(left.map((m) => m.id));
    this.members = this.members.filter((m) => !gone.has(m.id));
    this._emitPresence("update", null, { joined, left });
  }

  _emitPresence(event, who, lists) {
    this._emit("presence", { room: this.room, event, member: who, members: this.members.slice(), count: this.memberCount, ...lists });
  }

  /** The room's first members, by id (of `count`): the list from now on. */
  _setMembers(list, count) {
    this.members = (Array.isArray(list) ? list : []).map(member);
    this._exactThrough = this.members.length >= count ? Infinity : this.members[this.members.length - 1]?.id ?? -Infinity;
  }

  /** Adds a member in id order, if it is not there yet and the list reaches that far. */
  _addMember(m) {
    if (m.id > this._exactThrough) return;
    const i = this.members.findIndex((x) => x.id >= m.id);
    if (i < 0) this.members.push(m);
    else if (this.members[i].id !== m.id) this.members.splice(i, 0, m);
  }

  /**
   * Puts a page of members (ids above `after`, through `next`) in the list, in place of what
   * it had there, when the page continues what the list is sure of.
   */
  _mergeMembers(after, page, next) {
    const from = after ?? -Infinity;
    const through = this._exactThrough;
    if (from > through) return;
    const end = next ?? Infinity;
    this.members = [
      ...this.members.filter((m) => m.id <= from),
      ...page,
      ...this.members.filter((m) => m.id > end && m.id <= through),
    ];
    this._exactThrough = Math.max(through, end);
  }

  _onError(frame) {
    const error = new ChatError(frame.code, frame.message, { room: frame.room, id: frame.id });
    if (frame.id) {
      const i = this._pending.findIndex((p) => p.id === frame.id);
      if (i >= 0) {
        // Dropped, or not stored: neither acknowledged nor delivered. Try again shortly (the
        // id keeps it idempotent), and nothing after it before it.
        const retry = frame.code === "rate_limited" || frame.code === "storage_failed";
        if (i === 0 && retry && this._retryLater(this._pending)) return;
        const [pending] = this._pending.splice(i, 1);
        pending.reject(error);
        this._writeNext(this._pending);
        return;
      }
    }
    if (this._joinWaiter && !this._joined && frame.room === this.room) {
      const waiter = this._joinWaiter;
      this._joinWaiter = null;
      waiter.reject(error);
      return;
    }
    // An error naming the room and no id, while joined, answers the oldest history or
    // members request on the wire: the server answers in order, and no typing notice goes
    // out while one is there.
    const line = frame.id || frame.room !== this.room ? null : this._oldestOnWire(this._idless);
    if (line) {
      if (frame.code === "rate_limited" && this._retryLater(line)) return;
      this._settle(line, (request) => request.reject(error));
      return;
    }
    this._emit("error", error);
  }
}
