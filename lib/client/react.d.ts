// TypeScript declarations for react.js, the React entry point of the wtchat package.
//
//   import { useChat } from "wtchat/react";
//   const { messages, members, status, send } = useChat({ room: "lobby", name: "Ann" });
//
// Checked against react.js by `npm run check` (see check/tsconfig.json).

import type { Ack, Chat, ChatError, ConnectOptions, Me, Member, Message, SendOptions, Status, Transport } from "./wtchat.js";

/**
 * What `useChat()` connects with: `connect()`'s options but the handlers and the abort
 * signal, which the hook owns. A change of any of them closes the connection and opens a
 * new one (a new object with the same values changes nothing).
 */
export type UseChatOptions = Omit<ConnectOptions, "on" | "signal">;

/** What `useChat()` returns: the room as it stands, and how to write to it. */
export interface UseChat {
  /** The room's messages, oldest first: its recent history, then what arrived since, each
   * once, across reconnects, with edits, deletions and reactions applied as they come.
   * Render `text` as text, never as HTML. */
  messages: readonly Message[];
  /** The room's members (in a big room, its first ones: see `Chat.membersComplete`). */
  members: readonly Member[];
  /** How many members the room has, this client included. */
  memberCount: number;
  /** This connection as the room sees it; null until joined. */
  me: Me | null;
  /** `connecting` until the first join, `reconnecting` while the client reconnects by
   * itself, `closed` once it gave up (see `error`). */
  status: Status;
  /** The transport in use while connected; null otherwise. */
  transport: Transport | null;
  /** Why the chat closed (`connect()` failed, the server refused or kicked), or the last
   * server error not tied to a send; null again once connected. */
  error: ChatError | null;
  /** The client's Chat once joined (for `typing()`, `history()`, `membersPage()`, `on()`);
   * null before, and closed once the component unmounts or the options change. */
  chat: Chat | null;
  /**
   * Sends a message to the room; resolves with its acknowledgement. Sent while the first
   * connection is under way, it waits for it (and fails if that fails); while the client
   * reconnects, it is queued and delivered once. Rejects with a ChatError (`closed` once
   * unmounted). With `replyTo`, the message answers that one. The same function for the
   * component's life. (Edits, deletions and reactions: `chat.edit`, `chat.delete`,
   * `chat.react`, `chat.unreact`.)
   */
  send(text: string, options?: SendOptions): Promise<Ack>;
}

/**
 * Joins `options.room` while the component is mounted, over one connection: closed on
 * unmount (the room sees the member leave) and when the options change; strict mode's
 * extra setup and cleanup in development opens no second connection.
 */
export function useChat(options: UseChatOptions): UseChat;
