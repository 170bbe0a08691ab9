// TypeScript declarations for wtchat.js, the wtchat browser client.
//
//   import { connect } from "/wtchat/wtchat.js";
//   const chat = await connect({ room: "lobby", name: "Ann" });
//   chat.on("message", (m) => render(m.from, m.text)); // render as text, never as HTML
//   const { seq } = await chat.send("hello");
//
// Checked against wtchat.js by `npm run check` (see check/tsconfig.json): the JS names these
// types in JSDoc and is type-checked against them, and its exports are compared with these.

/** The client's version. */
export const VERSION: string;

/** The protocol version this client speaks (its first frame on every connection names it). */
export const PROTOCOL: number;

/** The transports the client can use. */
export type Transport = "webtransport" | "websocket" | "sse" | "longpoll";

/** Where the connection stands. */
export type Status = "connecting" | "connected" | "reconnecting" | "closed";

/** Close codes: the WebSocket close code, the WebTransport close code and `bye.code`. */
export const CloseCodes: Readonly<{
  NORMAL: 1000;
  SHUTDOWN: 4000;
  TOO_SLOW: 4001;
  RECONNECT: 4002;
  IDLE_TIMEOUT: 4003;
  BUSY: 4004;
  PROTOCOL_ERROR: 4400;
  UNAUTHORIZED: 4401;
  KICKED: 4403;
  FRAME_TOO_LARGE: 4409;
}>;

/** Whether a close code means "reconnect and resume": 4000-4399. */
export function shouldReconnect(code: number): boolean;

/**
 * Error codes a promise may reject with or an `error` event may carry: the server's error
 * codes, plus the client's own (`closed`, `unreachable`, `unsupported`, `timeout`,
 * `aborted`: `connect()`'s `signal` aborted) and the
 * `reason` of a `bye` that said not to reconnect (`unauthorized`, `kicked`, ...) or of a
 * `left` that took the connection out of one room (`kicked`: a kick or a ban there).
 */
export type ErrorCode =
  | "invalid_json"
  | "invalid_utf8"
  | "unknown_type"
  | "invalid_frame"
  | "binary_unsupported"
  | "not_joined"
  | "already_joined"
  | "invalid_name"
  | "invalid_room"
  | "invalid_text"
  | "text_too_long"
  | "unknown_message"
  | "message_deleted"
  | "not_yours"
  | "edit_window_passed"
  | "unknown_reply"
  | "invalid_reaction"
  | "too_many_reactions"
  | "invalid_mentions"
  | "too_many_rooms"
  | "server_full"
  | "rate_limited"
  | "room_forbidden"
  | "rejected"
  | "storage_failed"
  | "banned"
  | "busy"
  | "closed"
  | "unreachable"
  | "unsupported"
  | "timeout"
  | "aborted"
  | "unauthorized"
  | "kicked"
  | (string & {});

/** An error with a machine-readable code. */
export class ChatError extends Error {
  constructor(code: ErrorCode, message?: string, details?: object);
  readonly name: "ChatError";
  readonly code: ErrorCode;
  /** The room the server's error frame named, if any. */
  readonly room?: string;
  /** The client message id the server's error frame named, if any. */
  readonly id?: string;
  /** For a refusal by `bye`, or a room left by the host's kick or ban: its close code. */
  readonly closeCode?: number;
  /**
   * For `rate_limited` from the ticket request, and for `busy` (the server had no room for
   * the connection: over WebSocket and WebTransport its `retryAfterMs`, over HTTP its
   * `Retry-After`): how long the server asked the client to wait, in milliseconds. The
   * chat waits at least this long before its next attempt.
   */
  readonly retryAfter?: number;
}

/** A member of the room: the connection's id, its display name and its public sender id. */
export interface Member {
  id: number;
  name: string;
  /** The member's public sender id: what a message's `sender` says and what a mention names
   * (`send(text, {mentions: [member.sender]})`). One user's tabs share it. Absent when the
   * server does not know it. */
  sender?: string;
}

/** This connection as the room sees it, with its public sender id. */
export interface Me extends Member {
  sender: string;
}

/** A room message. */
export interface Message {
  room: string;
  /** The room epoch it was numbered under (changes when the room is recreated). */
  epoch: number;
  /** Room sequence number: increasing within an epoch (edits and deletions take numbers
   * of their own, so messages' numbers may skip). */
  seq: number;
  /** The sender's display name. */
  from: string;
  /** The text, as last edited. Render it as text (`textContent`), never as HTML. */
  text: string;
  /** Server time, milliseconds since 1970. */
  time: number;
  /** When the text was last edited (server time, ms since 1970); absent if never. */
  edited?: number;
  /** The message this one answers, quoted as it was then (absent: not a reply). */
  replyTo?: Quote;
  /** The sender ids it mentions (empty: none); `chat.mentionsMe(message)` says whether one
   * is this user's. */
  mentions: string[];
  /** The sender's public id (none for messages the host published). */
  sender?: string;
  /** The client message id: on this client's own messages as they are sent (the server
   * tells nobody else; history replayed after a reconnect has none). */
  id?: string;
  /** Whether this client sent it (its `sender` is `me.sender`), in history too. */
  mine: boolean;
  /** Its reactions, in the order they were first added (empty: none). Kept up to date in
   * `chat.messages` (a `reacted` event says when). */
  reactions: Reaction[];
}

/** One reaction on a message: how many reacted with it, and whether this client did. */
export interface Reaction {
  /** One emoji (`"👍"`, `"👍🏽"`), or one of the host's names (`limits.reactionNames`). */
  reaction: string;
  /** How many members reacted with it (at least 1). */
  count: number;
  /** Whether this client's member is one of them: `chat.unreact()` takes it back. */
  mine: boolean;
}

/** One who reacted to a message, as `chat.reactions()` lists them. */
export interface Reactor {
  reaction: string;
  /** Their display name. */
  from: string;
  /** Their public sender id (as a message's `sender`). */
  sender?: string;
  /** The reaction's number in the room's order (pages go by it: `after`). */
  at: number;
}

/** What `chat.reactions()` asks for. */
export interface ReactorsOptions {
  /** Only reactions numbered above this one: the previous page's `next`. Default: from the first. */
  after?: number;
  /** At most this many. Default and maximum: 100 (the server's). */
  limit?: number;
}

/** One page of who reacted to a message, in the order they reacted. */
export interface ReactorsPage {
  reactors: Reactor[];
  /** The `after` of the next page; null when this one is the last. */
  next: number | null;
}

/** The answer to `react()` and `unreact()`. */
export interface ReactionAck extends Ack {
  /** All of this client's reactions on the message now (maybe none). */
  mine: string[];
}

/** The message a reply answers, as the reply keeps it: shown without fetching it. */
export interface Quote {
  /** Its sequence number. */
  seq: number;
  /** Its sender's display name. */
  from: string;
  /** Its first 100 characters when it was answered; empty once deleted. */
  text: string;
  /** Whether it was deleted since. */
  deleted: boolean;
}

/** Options of `send()`. */
export interface SendOptions {
  /** The `seq` of the message this one answers. */
  replyTo?: number;
  /**
   * The members it mentions, by sender id (a `Member`'s `sender`): at most 20 distinct ones
   * (a repeated one is sent once). Each is told wherever it is connected (a `mention`
   * event) and counts the message apart among its unread ones. Not an array of strings: a
   * TypeError; more than 20, or one that is not a sender id: `invalid_mentions`.
   */
  mentions?: readonly string[];
}

/**
 * This user's read state in a room: what `chat.unread` holds and a `read` event carries.
 * The same for every tab of the user (the server keeps it by sender id).
 */
export interface Unread {
  /** The messages from others numbered after `lastRead` and not deleted. */
  readonly count: number;
  /** How many of those mention this user. */
  readonly mentions: number;
  /** The last-read mark: the room is read up to this message number (0: nothing read). */
  readonly lastRead: number;
}

/** The read state in the room changed (`chat.unread`): the new one. */
export interface ReadEvent extends Unread {
  readonly room: string;
}

/** How far one member has read the room, as `chat.readers` holds it. */
export interface Reader {
  /** Their public sender id (the key in `chat.readers`). */
  readonly sender: string;
  /** Their display name. */
  readonly name: string;
  /** They have read the room up to this message number. */
  readonly seq: number;
}

/**
 * Members read further: a small room's `receipts` (at most one a second, with those whose
 * marks moved), or a message (its sender has read up to it).
 */
export interface ReceiptsEvent {
  room: string;
  /** The readers that moved, as they are now (empty when a recreated room — a new epoch —
   * forgot them all). */
  changed: Reader[];
  /** Everyone known, after the change (`chat.readers`, not a copy). */
  readers: ReadonlyMap<string, Reader>;
}

/**
 * This user was mentioned in a message of `room` — any room: the connection's other rooms,
 * and ones it has not joined (where another tab of the user is, or none).
 */
export interface MentionEvent {
  /** The message's room (not necessarily this Chat's). */
  room: string;
  /** The message's number there. */
  seq: number;
  /** Its sender's display name. */
  from: string;
  /** Its sender's public id; absent for the host's messages. */
  sender?: string;
  /** Its first 100 characters. Render it as text, never as HTML. */
  text: string;
}

/** The server's limits, from `/wtchat/config`. */
export interface Limits {
  maxFrameBytes: number;
  /** Bytes one post of frames (SSE, long polling) may hold; the client splits its posts to fit. */
  maxPostBytes?: number;
  maxTextChars: number;
  maxNameChars: number;
  maxRoomChars: number;
  maxRoomsPerConnection: number;
  /** Frames per second a connection may send, sustained; the client paces itself under it. */
  framesPerSecond: number;
  /** Frames a connection may send in a burst, when the server says. */
  frameBurst?: number;
  /** A client that sends nothing for this long is closed (4003); the client pings within it. */
  idleTimeoutMs?: number;
  /** How long after sending a message its sender may edit it (0: never). */
  editWindowMs?: number;
  /** Distinct reactions one message may have (`too_many_reactions` past it). */
  reactionsPerMessage?: number;
  /** Reactions one member may put on one message (`too_many_reactions` past it). */
  reactionsPerMember?: number;
  /** The names a reaction may also be, besides one emoji (maybe none). */
  reactionNames?: string[];
}

/**
 * Who is in the room. A small room says who comes and goes as it happens (`join`, `leave`).
 * A room past the server's threshold (100 members by default) is big: it says what changed
 * at most once per presence interval (1 s by default: `update`), and `members` may be only
 * its first members (see `Chat.membersComplete`).
 */
export interface PresenceEvent {
  room: string;
  /**
   * `sync`: the member list was replaced (on every join, including after reconnects — in a
   * big room only its first page —, and with everyone when a big room became small again).
   * `update`: a big room's news, at most once per presence interval: `count`, and `joined`
   * and `left` unless too many changed at once or the room gives counts only — then the
   * list may name some who left and miss some who came (`chat.membersNext` is undefined):
   * a page that shows it fetches the first page again with `membersPage()`, not more than
   * once every few seconds.
   */
  event: "join" | "leave" | "sync" | "update";
  /** Who joined or left (for `sync` after a join: this client; else null). */
  member: Member | null;
  /** The member list after the change (`chat.members`). */
  members: Member[];
  /** How many members the room has after the change (for several leaving at once: after
   * all of them), this client included (`chat.memberCount`). */
  count: number;
  /** With `update`: who joined since the last one, in order; absent when only counted. */
  joined?: Member[];
  /** With `update`: who left since the last one, in order; absent when only counted. */
  left?: Member[];
}

export interface TypingEvent {
  room: string;
  /** Who is typing. Notices may be lost; show one for a few seconds. */
  from: string;
}

export interface StatusEvent {
  status: Status;
  /** With `connected`: the transport in use. */
  transport?: Transport;
  /** With `reconnecting`, `connecting` (a retry) and `closed`: why. */
  reason?: string;
  /** With `closed`: the close code, when known. */
  code?: number;
  /**
   * With `closed` on a failure: its error code (`unauthorized`, `kicked`, ...). With
   * `connecting` or `reconnecting` after a refusal the chat waits out: `busy` (the server
   * had no room for the connection and said how long to wait: `delay`).
   */
  error?: ErrorCode;
  /** With `reconnecting` and `connecting` (a retry): the attempt number and the delay before it, in ms. */
  attempt?: number;
  delay?: number;
}

export interface GapEvent {
  room: string;
  /** The room's epoch now. */
  epoch: number;
  /** The epoch seen before; different when the room was recreated (server restart). */
  previousEpoch: number | null;
  /** The last sequence number seen before the gap. */
  since: number;
}

/** A message was deleted (by its sender or the host): remove it from view. */
export interface DeletedEvent {
  room: string;
  /** The room epoch the deleted message was numbered under. */
  epoch: number;
  /** The deleted message's sequence number. */
  seq: number;
}

/** A message's text was edited (by its sender or the host). */
export interface EditedEvent {
  room: string;
  epoch: number;
  /** The edited message's sequence number. */
  seq: number;
  /** Its new text. */
  text: string;
  /** When it was edited, server time. */
  edited?: number;
  /** The message as `chat.messages` now holds it; null when it holds no such message. */
  message: Message | null;
}

/**
 * A message's reactions changed: someone reacted or took one back (this client too, once
 * the server stored it), or this client's own changed (`mine`).
 */
export interface ReactedEvent {
  room: string;
  epoch: number;
  /** The message's sequence number. */
  seq: number;
  /** Its reactions now (the same as `message.reactions`). */
  reactions: Reaction[];
  /** The message as `chat.messages` now holds it; null when it holds no such message. */
  message: Message | null;
}

export interface ChatEvents {
  message: Message;
  /** A message was edited (`chat.messages` has the new text); after a reconnect, once per
   * message edited while away. */
  edited: EditedEvent;
  /** A message was deleted (it is gone from `chat.messages` too); after a reconnect, once
   * per message deleted while away. */
  deleted: DeletedEvent;
  /** A message's reactions changed (`chat.messages` has them); after a reconnect, once per
   * message whose reactions changed while away. Of a message the client never held nor
   * fetched in a `history()` page, it cannot tell an edit from reactions: both events come. */
  reacted: ReactedEvent;
  presence: PresenceEvent;
  typing: TypingEvent;
  status: StatusEvent;
  /** A server error not tied to a `send()` or `history()` (whose promise rejects instead). */
  error: ChatError;
  /** Messages were missed and cannot be replayed (too old, or the room was recreated).
   * In the same room (the same epoch), `chat.messages` starts over with the replay that
   * follows: what it held may be stale. Reload the history you show. */
  gap: GapEvent;
  /**
   * `chat.unread` changed: the server's read state (after each join, once its replay is in;
   * when the mark moved here or in another tab; in answer to `markRead()`), or a message
   * that came since (from others: one more; one's own: read up to it), or one deleted.
   */
  read: ReadEvent;
  /** `chat.readers` changed: members read further (small rooms' receipts; every message
   * says its sender read up to it). */
  receipts: ReceiptsEvent;
  /**
   * This user was mentioned, in any room (see `MentionEvent.room`). A connection's mention
   * reaches every Chat on it: each of them fires this once — subscribe on one Chat (one
   * that stays joined) to hear each mention once.
   */
  mention: MentionEvent;
}

export interface ConnectOptions {
  /** The room to join: 1 to 64 of `A-Z a-z 0-9 _ - . : @`. */
  room: string;
  /** Display name (1 to 32 characters). Optional where the host names its users (a
   * `token`, or the host's login through tickets): the host's name wins. */
  name?: string;
  /** The wtchat server's HTTP base URL. Default: the page's origin. */
  server?: string;
  /** Force one transport. Default: WebTransport with a head start, racing WebSocket; then
   * SSE and long polling once both failed or stayed silent for 1.5 s. */
  transport?: Transport;
  /** A token from the host application. On a server of tokens (`/wtchat/config`'s
   * `ticketFor` is `"token"`) the client trades it, in an `Authorization` header
   * (`POST /wtchat/ticket`), for single-use tickets, and only those travel in URLs; on a
   * server whose host hook decides it goes to that hook as `?token=`. Without one, where the
   * server says so (`ticketFor` `"login"`), the client asks for tickets with the page's
   * cookies (`POST`, credentials included) and passes those. */
  token?: string;
  /** Handlers registered before connecting, so they also see the joined room's history. */
  on?: { [E in keyof ChatEvents]?: (event: ChatEvents[E]) => void };
  /** How long WebTransport tries alone before WebSocket races it, ms. Default 500. */
  headStart?: number;
  /** How long `connect()` keeps retrying before it rejects with `unreachable`, ms. Default 10000. */
  timeout?: number;
  /** Messages kept in `chat.messages`, oldest dropped first. Default 1000. */
  maxMessages?: number;
  /**
   * Ends the chat when it aborts: before `connect()` resolves, the attempt stops and
   * `connect()` rejects with `aborted` at once; after, it is `chat.close()`. What a
   * component that connects in an effect aborts in its cleanup.
   */
  signal?: AbortSignal;
}

/** What `chat.join()` may say about the room it joins. */
export interface JoinOptions {
  /** The display name in this room. Default: the one given to `connect()`. */
  name?: string;
  /** Handlers registered before joining, so they also see the room's history. */
  on?: { [E in keyof ChatEvents]?: (event: ChatEvents[E]) => void };
  /** Messages kept in this room's `messages`. Default: as given to `connect()`, else 1000. */
  maxMessages?: number;
}

/** The answer to `send()`: the message's room sequence number and client id. */
export interface Ack {
  seq: number;
  id: string;
}

/** What `history()` asks for. */
export interface HistoryOptions {
  /** The chat's own room (the default); any other is refused with `not_joined`. */
  room?: string;
  /** Only messages with a sequence number below this one. Default: up to the newest. */
  before?: number;
  /** At most this many messages. Default and maximum: 100 (the server's). */
  limit?: number;
}

/** What `membersPage()` asks for. */
export interface MembersPageOptions {
  /** Only members with ids above this one: the previous page's `next`. Default: from the lowest. */
  after?: number;
  /** At most this many members. Default and maximum: 100 (the server's). */
  limit?: number;
}

/** One page of the room's members. */
export interface MembersPage {
  /** By id, lowest first. */
  members: Member[];
  /** How many members the room has. */
  count: number;
  /** The `after` of the next page; null when this one is the last. */
  next: number | null;
}

/** One page of older messages. */
export interface HistoryPage {
  /** Oldest first, in the shape of `message` events. */
  messages: Message[];
  /** Whether older messages remain (ask again with `before` = the first one's `seq`). */
  more: boolean;
}

/**
 * A joined room. {@link connect} makes the first; `chat.join()` more on the same connection.
 * Every Chat of one connection shares its transport, status and reconnects; each has its
 * own messages, members and events (`status` events go to all of them).
 */
export class Chat {
  private constructor();
  readonly room: string;
  /** The display name, as the server has it once joined. */
  readonly name: string | null;
  /** The server's HTTP base URL. */
  readonly server: string;
  /** The transport in use; null while not connected. */
  readonly transport: Transport | null;
  /** The connection's status; `closed` also once this room was left. */
  readonly status: Status;
  /** The room's messages received so far, in order, without duplicates, without the
   * deleted ones (older pages from `history()` are not added). */
  readonly messages: readonly Message[];
  /**
   * The room's members the client knows, by id: everyone in a small room; in a big one its
   * first members (the lowest ids): the first page on joining, more as `membersPage()`
   * brings them, kept up to date by `presence` events.
   */
  readonly members: readonly Member[];
  /** How many members the room has, this client included; exact in rooms of any size. */
  readonly memberCount: number;
  /** Whether `members` is everyone in the room (then it has `memberCount` members). */
  readonly membersComplete: boolean;
  /**
   * What to pass as `after` to `membersPage()` to continue `members`: the last id it has;
   * undefined when an update without lists left it in doubt (ask for the first page again);
   * null when it is complete.
   */
  readonly membersNext: number | null | undefined;
  /** This connection as the room sees it. */
  readonly me: Me | null;
  /** The server's limits. */
  readonly limits: Limits | null;
  /** The room epoch and the last sequence number seen (what a reconnect resumes from). */
  readonly epoch: number | null;
  readonly seq: number;
  /**
   * This user's read state in the room, as the last `read` event said (a new object on each
   * change): the server's read state settles it — in every `joined` (taken once its
   * replay is in), in `read` frames whenever the mark moves (here, in another tab, by the host), in answer to
   * `markRead()` — and the client counts in what comes between: a message from others adds
   * one (and a mention), one's own reads the room up to it, a deletion takes one out. Zeros
   * until the first join's replay is in. The client never marks read by
   * itself: see `markRead()`.
   */
  readonly unread: Unread;
  /**
   * Who has read the room how far, by sender id (this user too, and members who left):
   * from the server's receipts, which small rooms send (fewer members than the server's
   * presence threshold, at most one a second) as members read, and from messages (the
   * sender of message s has read up to s). Nothing is known of who read before the join
   * but by their messages. Big rooms send no receipts. Updated in place; a `receipts`
   * event says when.
   */
  readonly readers: ReadonlyMap<string, Reader>;

  /** Subscribes to an event; returns a function that unsubscribes. */
  on<E extends keyof ChatEvents>(event: E, handler: (event: ChatEvents[E]) => void): () => void;

  /**
   * Sends a message. Resolves with the acknowledgement once the server stored it; rejects
   * with a ChatError carrying the server's error code. While reconnecting, sends are queued
   * and delivered once, in order. One the server dropped (`rate_limited`) or could not
   * store (`storage_failed`) is sent again a few times, keeping its place, before it
   * rejects. `id` is the client message id, known at once.
   */
  send(text: string, options?: SendOptions): Promise<Ack> & { readonly id: string };

  /**
   * Replaces the text of message `seq`, one of this client's own, within
   * `limits.editWindowMs` of its sending. Resolves once stored (the ack's `seq` is the
   * edit's own number); rejects with a ChatError: `not_yours`, `edit_window_passed`,
   * `message_deleted`, `unknown_message`, `invalid_text`, `text_too_long`, `closed`.
   * Queued with the sends while reconnecting.
   */
  edit(seq: number, text: string): Promise<Ack>;

  /**
   * Deletes message `seq`, one of this client's own. Resolves once stored; rejects with a
   * ChatError: `not_yours`, `message_deleted`, `unknown_message`, `closed`.
   */
  delete(seq: number): Promise<Ack>;

  /**
   * Adds this client's `reaction` (one emoji, or one of `limits.reactionNames`) to message
   * `seq`. Resolves once stored (the ack's `seq` is the reaction's own number, `mine` all of
   * this client's reactions on the message); the message's `reactions` count it, in every
   * member's copy (a `reacted` event). Reacting twice with one changes nothing. Rejects with
   * a ChatError: `invalid_reaction`, `too_many_reactions` (`limits.reactionsPerMessage`
   * distinct ones on the message, or `limits.reactionsPerMember` of this member's),
   * `unknown_message`, `message_deleted`, `closed`. Queued with the sends while reconnecting.
   */
  react(seq: number, reaction: string): Promise<ReactionAck>;

  /** Takes this client's `reaction` on message `seq` back; resolves and rejects like
   * `react()` (taking back one it does not have changes nothing). */
  unreact(seq: number, reaction: string): Promise<ReactionAck>;

  /**
   * One page of who reacted to message `seq`, in the order they reacted: up to `limit`
   * numbered above `after`. Rejects with a ChatError: `unknown_message`, `message_deleted`,
   * `not_joined`, `closed`; with a TypeError when `seq` or `limit` is not a positive whole
   * number or `after` not a whole number (0 or more). Answered in the order asked; while
   * reconnecting they wait.
   */
  reactions(seq: number, options?: ReactorsOptions): Promise<ReactorsPage>;

  /**
   * One page of the room's older messages: up to `limit` below `before`, oldest first, and
   * whether older ones remain. Rejects with a ChatError: `not_joined`, `storage_failed` (the
   * server could not read its storage: try again later), `closed`; with a TypeError when
   * `before` or `limit` is not a positive whole number. Requests are answered in the order
   * they were made; while reconnecting they wait. `chat.messages` is left as it is.
   */
  history(options?: HistoryOptions): Promise<HistoryPage>;

  /**
   * One page of the room's members: up to `limit` with ids above `after`, by id. The page
   * also goes into `chat.members`, in place of what it had in that range, when it continues
   * what the client is sure of: the first page always (after an update without lists it
   * replaces the whole list), a later one when `after` is at most `chat.membersNext`. No
   * `presence` event: the promise is the news; `memberCount` takes the page's `count`.
   * Rejects with a ChatError: `not_joined`, `closed`; with a TypeError when `after` is not
   * a whole number (0 or more) or `limit` not a positive one. Requests are answered in the
   * order they were made; while reconnecting they wait.
   */
  membersPage(options?: MembersPageOptions): Promise<MembersPage>;

  /** Tells the room this user is typing (a datagram over WebTransport). Throttled to one
   * notice per 2.5 s; returns whether one was sent. */
  typing(): boolean;

  /**
   * Joins another room on this chat's connection (a browser allows six connections per
   * host over HTTP/1.1, and an SSE stream holds one): resolves with its Chat once joined
   * and its recent history is in — the same Chat when the room is joined already. A
   * reconnect joins every room again from where it was. Rejects with a ChatError
   * (`too_many_rooms` past `limits.maxRoomsPerConnection`, `invalid_room`,
   * `room_forbidden`, `banned`, `closed`).
   */
  join(room: string, options?: JoinOptions): Promise<Chat>;

  /**
   * Leaves this room; the connection stays, with its other rooms. This room's queued
   * requests are rejected with `closed`, and its status becomes `closed`.
   */
  leave(): void;

  /** Leaves every room of this chat's connection and closes it; queued sends are rejected
   * with `closed`. */
  close(): void;

  /** Whether a message was sent by this client: by its sender id (the same across
   * reconnects), or by one of its client message ids. */
  isMine(message: { sender?: string; id?: string }): boolean;

  /** Whether a message mentions this user: its `mentions` hold `me.sender`. */
  mentionsMe(message: { mentions?: readonly string[] }): boolean;

  /**
   * Marks the room read up to message `seq` (default: `chat.seq`, the newest seen) for this
   * user, in every tab: the server keeps the mark (taking a number past the newest as the
   * newest) and answers with the new state (a `read` event). The client never marks read
   * by itself: call it for what the page has shown (visible, on screen). Marks only move
   * forward: returns false, sending nothing, when `seq` is at or below the mark or below one
   * already on its way; true when a mark goes out. Calls made while one is on its way, or
   * while reconnecting, are sent as one once possible. A server error about it is an
   * `error` event. Throws a TypeError when `seq` is not a whole number.
   */
  markRead(seq?: number): boolean;
}

/**
 * Fetches `/wtchat/config` from the server, connects (WebTransport, or WebSocket where
 * WebTransport is missing, blocked or slow), joins the room, and resolves once the room is
 * joined and its recent history is in `chat.messages`. Rejects with a ChatError
 * (`invalid_name`, `invalid_room`, `room_forbidden`, `banned`, `unauthorized`,
 * `unsupported`, `unreachable`, `aborted` when `options.signal` aborted first, ...).
 */
export function connect(options: ConnectOptions): Promise<Chat>;
