// wtchat/react: `useChat()`, the wtchat client as a React hook (React 18 and 19).
//
//   import { useChat } from "wtchat/react";
//   const { messages, members, status, send, error } = useChat({ room: "lobby", name: "Ann" });
//
// Plain JavaScript with JSDoc (no JSX, no build step), typed by react.d.ts and type-checked
// against it in strict mode by `npm run check`.
//
// One hook, one connection. The connection belongs to the effect that opened it, and the
// effect's cleanup ends it through `connect()`'s abort signal, which works whether or not
// `connect()` has resolved yet:
//
// - Strict mode (development) runs every effect twice: set up, clean up, set up. The first
//   attempt is aborted in the cleanup right after it started, before any transport opened
//   (only its `/wtchat/config` request went out), so the room never sees it; the second is
//   the one live connection.
// - Unmounting closes the connection (leave frames, then the close), so the server and
//   the others in the room see the member leave at once.
// - A change of `room` or of any connection option is a new connection: the old one is
//   closed, the new one opened, and the state starts empty for it.
// - The client reconnects by itself when the connection drops and resumes the room; the
//   hook follows its `status` events (`reconnecting`, `connected`). Messages come from the
//   client's own list, which it keeps in order and without duplicates across reconnects.
//
// Events of a connection the hook let go of never reach its state: every handler checks
// that its connection is still the live one.

import { useCallback, useEffect, useRef, useState } from "react";
import { ChatError, connect } from "./wtchat.js";

/** @typedef {import("./react.js").UseChatOptions} UseChatOptions */
/** @typedef {import("./react.js").UseChat} UseChat */
/** @typedef {import("./wtchat.js").Chat} Chat */

/**
 * What the hook shows, for the connection options in `key`.
 * @typedef {Omit<UseChat, "send"> & { key: string }} State
 */

/**
 * The options that make a connection, in a fixed order (the effect's dependencies). The
 * type makes it name every option `connect()` takes but the two the hook owns (`on`,
 * `signal`): an option added to the client fails the check until the hook passes it on.
 * @type {{ [K in keyof UseChatOptions]-?: true }}
 */
const CONNECTION_OPTIONS = {
  room: true,
  name: true,
  server: true,
  transport: true,
  token: true,
  headStart: true,
  timeout: true,
  maxMessages: true,
};
const OPTION_NAMES = /** @type {(keyof UseChatOptions)[]} */ (Object.keys(CONNECTION_OPTIONS));

/**
 * The state before a connection says anything.
 * @param {string} key
 * @returns {State}
 */
function initial(key) {
  return {
    key,
    messages: [],
    members: [],
    memberCount: 0,
    me: null,
    status: "connecting",
    transport: null,
    error: null,
    chat: null,
  };
}

/**
 * Connects to `options.room` while the component is mounted; returns the room's messages,
 * members, the connection's status and transport, the last error, and `send`.
 * @param {UseChatOptions} options
 * @returns {UseChat}
 */
export function useChat(options) {
  if (!options || typeof options.room !== "string" || !options.room) {
    throw new TypeError("useChat({room, name}) needs a room");
  }
  const values = OPTION_NAMES.map((name) => options[name]);
  // Strings and numbers: equal options give an equal key, whatever object holds them.
  const key = JSON.stringify(values);
  const [state, setState] = useState(() => initial(key));
  /** @type {import("react").RefObject<{ ready: Promise<Chat> } | null>} */
  const live = useRef(null);

  useEffect(() => {
    const controller = new AbortController();
    const ended = () => controller.signal.aborted;
    /** @param {(state: State) => State} change */
    const update = (change) => {
      if (ended()) return;
      setState((s) => change(s.key === key ? s : initial(key)));
    };
    // A state left by an earlier connection with these same options is not this one's.
    setState((s) => (s.key === key && s.chat === null && s.status === "connecting" && s.messages.length === 0 ? s : initial(key)));

    /** @type {import("./wtchat.js").ConnectOptions} */
    const connectOptions = { room: options.room, signal: controller.signal };
    OPTION_NAMES.forEach((name, i) => {
      if (values[i] !== undefined) Object.assign(connectOptions, { [name]: values[i] });
    });
    connectOptions.on = {
      // Registered before connecting: retries while connecting are news too.
      status: (e) =>
        update((s) => ({
          ...s,
          status: e.status,
          transport: e.status === "connected" ? e.transport ?? null : null,
          // Connected again: the trouble is over. Closed with a reason code: that is the error.
          error:
            e.status === "connected"
              ? null
              : e.status === "closed" && e.error
                ? new ChatError(e.error, e.reason, { closeCode: e.code })
                : s.error,
        })),
    };

    const ready = connect(connectOptions);
    const session = { ready };
    live.current = session;
    ready.then(
      (chat) => {
        if (ended()) return; // aborted: `connect()` closed it
        // The client's own lists are the truth (in order, deduplicated, trimmed to
        // `maxMessages`, edits, deletions and reactions applied, started over past a gap): copied, since
        // the client changes them in place.
        const messages = () => update((s) => ({ ...s, messages: chat.messages.slice() }));
        const members = () =>
          update((s) => ({ ...s, members: chat.members.slice(), memberCount: chat.memberCount, me: chat.me }));
        chat.on("message", messages);
        chat.on("edited", messages);
        chat.on("deleted", messages);
        chat.on("reacted", messages);
        chat.on("gap", messages);
        chat.on("presence", members);
        chat.on("error", (error) => update((s) => ({ ...s, error })));
        // Whatever arrived before these handlers is in the lists already.
        update((s) => ({
          ...s,
          chat,
          messages: chat.messages.slice(),
          members: chat.members.slice(),
          memberCount: chat.memberCount,
          me: chat.me,
          status: chat.status,
          transport: chat.transport,
        }));
      },
      (error) => {
        if (ended()) return;
        update((s) => ({ ...s, status: "closed", transport: null, error }));
      },
    );
    return () => {
      // Before `connect()` resolved: the attempt stops and no transport is joined. After:
      // `chat.close()`, which tells the room this member left.
      controller.abort();
      if (live.current === session) live.current = null;
    };
    // `values` are the options, one by one: a change of any is a new connection.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, values);

  const send = useCallback(
    /**
     * @param {string} text
     * @param {import("./wtchat.js").SendOptions} [options]
     * @returns {Promise<import("./wtchat.js").Ack>}
     */
    (text, options) => {
      const session = live.current;
      if (!session) return Promise.reject(new ChatError("closed", "the chat is not mounted"));
      // While the first connection is under way, the send waits for it (as the client
      // queues sends while it reconnects); if it fails, so does the send.
      return session.ready.then((chat) => chat.send(text, options));
    },
    [],
  );

  const shown = state.key === key ? state : initial(key);
  return {
    messages: shown.messages,
    members: shown.members,
    memberCount: shown.memberCount,
    me: shown.me,
    status: shown.status,
    transport: shown.transport,
    error: shown.error,
    chat: shown.chat,
    send,
  };
}
