// The example's page: who you are and which room, a button that mounts and unmounts the
// chat, and the chat itself (ChatRoom.tsx).
//
// Query parameters (all optional):
//   server     the wtchat server's HTTP base URL; default: this page's origin. A server on
//              another origin must allow this one (`wtchat serve --allow-origin ...`).
//   transport  webtransport | websocket | sse | longpoll: force one; default: the client's
//              choice (WebTransport with a head start, racing WebSocket).
//   room       default "lobby".
//   name       default "guest-NNNN".

import { type FormEvent, useState } from "react";
import type { Transport } from "wtchat";
import { ChatRoom } from "./ChatRoom";

const TRANSPORTS: readonly Transport[] = ["webtransport", "websocket", "sse", "longpoll"];

function settings() {
  const params = new URLSearchParams(location.search);
  const transport = params.get("transport");
  return {
    server: params.get("server") || location.origin,
    transport: TRANSPORTS.find((t) => t === transport),
    room: params.get("room") || "lobby",
    name: params.get("name") || `guest-${Math.floor(1000 + Math.random() * 9000)}`,
  };
}

export function App() {
  const [{ server, transport, name, room: firstRoom }] = useState(settings);
  const [room, setRoom] = useState(firstRoom);
  const [draftRoom, setDraftRoom] = useState(firstRoom);
  const [inside, setInside] = useState(true);

  const switchRoom = (e: FormEvent) => {
    e.preventDefault();
    if (draftRoom.trim()) setRoom(draftRoom.trim());
  };

  return (
    <main>
      <header>
        <h1>wtchat · React</h1>
        <form className="room" onSubmit={switchRoom}>
          <label>
            Room <input data-testid="room-input" value={draftRoom} onChange={(e) => setDraftRoom(e.target.value)} />
          </label>
          <button data-testid="switch-room">Switch</button>
        </form>
        {/* Unmounts the chat component: its connection closes and the room sees you leave. */}
        <button data-testid="toggle" onClick={() => setInside(!inside)}>
          {inside ? "Leave" : "Join"}
        </button>
      </header>
      {inside ? (
        <ChatRoom server={server} transport={transport} room={room} name={name} />
      ) : (
        <p data-testid="outside" className="outside">
          You left {room}. Join again to come back.
        </p>
      )}
    </main>
  );
}
