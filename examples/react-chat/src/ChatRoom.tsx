// One room through useChat: status, members, messages, and a line to write on.

import { type FormEvent, useEffect, useRef, useState } from "react";
import type { Transport } from "wtchat";
import { useChat } from "wtchat/react";

const LABELS: Record<Transport, string> = {
  webtransport: "WebTransport",
  websocket: "WebSocket",
  sse: "SSE",
  longpoll: "Long polling",
};

interface Props {
  server: string;
  transport?: Transport;
  room: string;
  name: string;
}

export function ChatRoom({ server, transport: forced, room, name }: Props) {
  const { messages, members, memberCount, me, status, transport, error, send } = useChat({
    server,
    transport: forced,
    room,
    name,
  });
  const [draft, setDraft] = useState("");
  const [sendError, setSendError] = useState<string | null>(null);
  const bottom = useRef<HTMLLIElement>(null);

  // Keep the newest message in view. A block body: an effect returns nothing but its
  // cleanup, and Chromium's scrollIntoView now returns a promise, which React would take for
  // one (and throw "destroy is not a function" at unmount).
  useEffect(() => {
    bottom.current?.scrollIntoView({ block: "end" });
  }, [messages.length]);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const text = draft.trim();
    if (!text) return;
    setDraft("");
    setSendError(null);
    send(text).catch((err: Error) => setSendError(err.message));
  };

  return (
    <section className="chat" data-testid="chat" data-room={room}>
      <p className="status">
        <span data-testid="status" data-status={status} className={`dot ${status}`}>
          {status}
        </span>{" "}
        <span data-testid="transport" data-transport={transport ?? ""}>
          {transport ? `over ${LABELS[transport]}` : ""}
        </span>{" "}
        in <strong>{room}</strong> as <strong data-testid="me">{me?.name ?? name}</strong>
      </p>
      {error && (
        <p role="alert" data-testid="error" className="error">
          {error.code}: {error.message}
        </p>
      )}
      <div className="panes">
        <ol className="messages" aria-label="Messages">
          {messages.map((m) => (
            <li key={`${m.epoch}:${m.seq}`} data-testid="message" data-seq={m.seq} className={m.mine ? "mine" : ""}>
              <span data-testid="message-from" className="from">
                {m.from}
              </span>
              {/* Text as text: React escapes it; never dangerouslySetInnerHTML. */}
              <span data-testid="message-text">{m.text}</span>
            </li>
          ))}
          <li ref={bottom} aria-hidden className="end" />
        </ol>
        <aside>
          <h2>
            Here <span data-testid="member-count">{memberCount}</span>
          </h2>
          <ul aria-label="Members">
            {members.map((m) => (
              <li key={m.id} data-testid="member">
                {m.name}
              </li>
            ))}
          </ul>
        </aside>
      </div>
      <form className="compose" onSubmit={submit}>
        <input
          data-testid="input"
          aria-label="Message"
          autoComplete="off"
          placeholder="Say something"
          value={draft}
          onChange={(e) => setDraft(e.target.value)}
        />
        <button data-testid="send">Send</button>
      </form>
      {sendError && (
        <p role="alert" className="error">
          {sendError}
        </p>
      )}
    </section>
  );
}
