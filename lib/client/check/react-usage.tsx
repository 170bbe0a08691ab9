// A typed React component against the package's "wtchat/react" entry, compiled in strict
// mode by `npm run check`: every field `useChat()` returns, its options, and what must not
// compile.

import { useEffect, useState } from "react";
import type { Ack, Chat, ChatError, Me, Member, Message, Status, Transport } from "wtchat";
import { type UseChat, type UseChatOptions, useChat } from "wtchat/react";

export function Room({ room, name }: { room: string; name: string }) {
  const options: UseChatOptions = { room, name, server: "http://localhost:8080", transport: "webtransport", maxMessages: 200 };
  const chat: UseChat = useChat(options);
  const { messages, members, memberCount, me, status, transport, error, send } = chat;
  const list: readonly Message[] = messages;
  const people: readonly Member[] = members;
  const count: number = memberCount;
  const self: Me | null = me;
  const state: Status = status;
  const over: Transport | null = transport;
  const problem: ChatError | null = error;
  const client: Chat | null = chat.chat;
  const [draft, setDraft] = useState("");
  const [typing, setTyping] = useState<string | null>(null);

  // The client's own events through the Chat it returns.
  useEffect(() => client?.on("typing", (e) => setTyping(e.from)), [client]);

  // @ts-expect-error: the hook owns the handlers and the abort signal
  useChat({ room, on: {} });
  // @ts-expect-error: a room is required
  useChat({ name });

  const submit = async () => {
    const ack: Ack = await send(draft);
    setDraft(`sent #${ack.seq}`);
  };
  // @ts-expect-error: text only
  void send(1);

  return (
    <section data-status={state} data-transport={over ?? ""}>
      {problem && <p role="alert">{problem.code}: {problem.message}</p>}
      <p>
        {count} here, {self?.name ?? "not joined yet"}
        {typing && `, ${typing} is typing`}
      </p>
      <ul>
        {people.map((m) => (
          <li key={m.id}>{m.name}</li>
        ))}
      </ul>
      <ol>
        {list.map((m) => (
          <li key={`${m.epoch}:${m.seq}`}>
            {m.from}: {m.text}
            {m.reactions.map((r) => (
              <button key={r.reaction} aria-pressed={r.mine} onClick={() => (r.mine ? client?.unreact(m.seq, r.reaction) : client?.react(m.seq, r.reaction))}>
                {r.reaction} {r.count}
              </button>
            ))}
          </li>
        ))}
      </ol>
      <input value={draft} onChange={(e) => setDraft(e.target.value)} />
      <button onClick={submit}>Send</button>
    </section>
  );
}
