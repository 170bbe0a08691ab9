// A typed program against the package's main entry, compiled in strict mode by
// `npm run check` (tsc -p check): it imports "wtchat" as an app does (through package.json's
// "exports"), uses every declared name, and says what must not compile. Removing or
// renaming a declared name, or loosening a type to `any`, fails the check.

import {
  type Ack,
  type Chat,
  type ChatEvents,
  type ConnectOptions,
  type DeletedEvent,
  type EditedEvent,
  type ErrorCode,
  type GapEvent,
  type HistoryOptions,
  type HistoryPage,
  type JoinOptions,
  type Limits,
  type Me,
  type Member,
  type MembersPage,
  type MembersPageOptions,
  type MentionEvent,
  type Message,
  type PresenceEvent,
  type Quote,
  type ReactedEvent,
  type Reaction,
  type ReactionAck,
  type Reactor,
  type ReactorsOptions,
  type ReactorsPage,
  type ReadEvent,
  type Reader,
  type ReceiptsEvent,
  type SendOptions,
  type Status,
  type StatusEvent,
  type Transport,
  type TypingEvent,
  type Unread,
  ChatError,
  CloseCodes,
  PROTOCOL,
  VERSION,
  connect,
  shouldReconnect,
} from "wtchat";

const version: string = VERSION;
const protocol: number = PROTOCOL;
const normal: 1000 = CloseCodes.NORMAL;
const codes: number[] = [
  CloseCodes.SHUTDOWN,
  CloseCodes.TOO_SLOW,
  CloseCodes.RECONNECT,
  CloseCodes.IDLE_TIMEOUT,
  CloseCodes.PROTOCOL_ERROR,
  CloseCodes.UNAUTHORIZED,
  CloseCodes.KICKED,
  CloseCodes.FRAME_TOO_LARGE,
];
const again: boolean = shouldReconnect(CloseCodes.RECONNECT);
// @ts-expect-error: the close codes are read-only
CloseCodes.NORMAL = 1001;

function render(line: string): void {
  void line;
}

function show(m: Message): void {
  const { room, epoch, seq, from, text, time, mine }: Message = m;
  const sender: string | undefined = m.sender;
  const id: string | undefined = m.id;
  render(`${room}#${epoch}.${seq} ${from}: ${text} at ${time} ${mine} ${sender} ${id}`);
  const reactions: Reaction[] = m.reactions;
  render(reactions.map((r: Reaction) => `${r.reaction} ${r.count}${r.mine ? " (you)" : ""}`).join(" "));
  const mentions: string[] = m.mentions;
  render(mentions.join(","));
}

export async function chatting(signal: AbortSignal): Promise<void> {
  const options: ConnectOptions = {
    room: "lobby",
    name: "Ann",
    server: "http://localhost:8080",
    transport: "websocket",
    token: "t",
    headStart: 500,
    timeout: 10_000,
    maxMessages: 100,
    signal,
    on: {
      message: show,
      status: (e: StatusEvent) => {
        const status: Status = e.status;
        const transport: Transport | undefined = e.transport;
        const error: ErrorCode | undefined = e.error;
        render(`${status} ${transport} ${e.reason} ${e.code} ${error} ${e.attempt} ${e.delay}`);
      },
    },
  };
  // @ts-expect-error: a room is required
  void connect({ name: "Ann" });
  // @ts-expect-error: no such transport
  void connect({ room: "lobby", transport: "carrier-pigeon" });

  let chat: Chat;
  try {
    chat = await connect(options);
  } catch (e) {
    if (e instanceof ChatError) {
      const code: ErrorCode = e.code;
      const name: "ChatError" = e.name;
      render(`${name} ${code} ${e.message} ${e.room} ${e.id} ${e.closeCode} ${e.retryAfter}`);
      if (e.code === "aborted" || e.code === "unreachable") return;
    }
    throw e;
  }

  // The room as it stands.
  const room: string = chat.room;
  const name: string | null = chat.name;
  const server: string = chat.server;
  const transport: Transport | null = chat.transport;
  const status: Status = chat.status;
  const messages: readonly Message[] = chat.messages;
  const members: readonly Member[] = chat.members;
  const count: number = chat.memberCount;
  const complete: boolean = chat.membersComplete;
  const next: number | null | undefined = chat.membersNext;
  const me: Me | null = chat.me;
  const limits: Limits | null = chat.limits;
  const epoch: number | null = chat.epoch;
  const seq: number = chat.seq;
  if (limits) {
    const { maxFrameBytes, maxTextChars, maxNameChars, maxRoomChars, maxRoomsPerConnection, framesPerSecond } = limits;
    const optional: (number | undefined)[] = [limits.maxPostBytes, limits.frameBurst, limits.idleTimeoutMs, limits.editWindowMs, limits.reactionsPerMessage, limits.reactionsPerMember];
    const names: string[] | undefined = limits.reactionNames;
    render(`${names?.join(",")}`);
    render(`${maxFrameBytes} ${maxTextChars} ${maxNameChars} ${maxRoomChars} ${maxRoomsPerConnection} ${framesPerSecond} ${optional}`);
  }
  render(`${room} ${name} ${server} ${transport} ${status} ${messages.length} ${count} ${complete} ${next} ${epoch} ${seq}`);
  const sender: string | undefined = members[0]?.sender;
  render(`${me?.id} ${me?.name} ${me?.sender} ${sender} ${members.map((m: Member) => `${m.id}:${m.name}`)}`);
  const unread: Unread = chat.unread;
  const { count: unreadCount, mentions: unreadMentions, lastRead }: Unread = unread;
  const readers: ReadonlyMap<string, Reader> = chat.readers;
  for (const [sender, r] of readers) render(`${sender} ${r.sender} ${r.name} read up to ${r.seq}`);
  render(`${unreadCount} ${unreadMentions} ${lastRead}`);
  // @ts-expect-error: the read state is the client's, read-only
  chat.unread.count = 0;
  // @ts-expect-error: so are the readers
  chat.readers.clear();
  // @ts-expect-error: the lists are the client's, read-only
  chat.messages.push(messages[0]);

  // Events: each handler gets its event's type; every one can be unsubscribed.
  const handlers: { [E in keyof ChatEvents]: (event: ChatEvents[E]) => void } = {
    message: show,
    edited: (e: EditedEvent) => render(`${e.room} ${e.epoch} ${e.seq} ${e.text} ${e.edited} ${e.message?.text}`),
    deleted: (e: DeletedEvent) => render(`${e.room} ${e.epoch} ${e.seq}`),
    reacted: (e: ReactedEvent) => {
      const now: Reaction[] = e.reactions;
      render(`${e.room} ${e.epoch} ${e.seq} ${now.length} ${e.message?.reactions.length}`);
    },
    presence: (e: PresenceEvent) => {
      const who: Member | null = e.member;
      const event: "join" | "leave" | "sync" | "update" = e.event;
      render(`${e.room} ${event} ${who?.name} ${e.members.length} ${e.count} ${e.joined?.length} ${e.left?.length}`);
    },
    typing: (e: TypingEvent) => render(`${e.room} ${e.from} is typing`),
    status: (e: StatusEvent) => render(e.status),
    error: (e: ChatError) => render(e.code),
    gap: (e: GapEvent) => render(`${e.room} ${e.epoch} ${e.previousEpoch} ${e.since}`),
    read: (e: ReadEvent) => {
      const now: Unread = e;
      render(`${e.room} ${now.count} ${now.mentions} ${now.lastRead}`);
    },
    receipts: (e: ReceiptsEvent) => {
      const moved: Reader[] = e.changed;
      const all: ReadonlyMap<string, Reader> = e.readers;
      render(`${e.room} ${moved.map((r) => `${r.name}@${r.seq}`)} ${all.size}`);
    },
    mention: (e: MentionEvent) => {
      const sender: string | undefined = e.sender;
      render(`${e.from} (${sender}) mentioned you in ${e.room}#${e.seq}: ${e.text}`);
    },
  };
  const offs: (() => void)[] = [
    chat.on("message", handlers.message),
    chat.on("edited", handlers.edited),
    chat.on("deleted", handlers.deleted),
    chat.on("reacted", handlers.reacted),
    chat.on("presence", handlers.presence),
    chat.on("typing", handlers.typing),
    chat.on("status", handlers.status),
    chat.on("error", handlers.error),
    chat.on("gap", handlers.gap),
    chat.on("read", handlers.read),
    chat.on("receipts", handlers.receipts),
    chat.on("mention", handlers.mention),
  ];
  // @ts-expect-error: no such event
  chat.on("nonsense", () => {});
  // @ts-expect-error: a message event is not a presence event
  chat.on("message", (e: PresenceEvent) => render(e.event));

  // Writing.
  const sending = chat.send("hello");
  const clientId: string = sending.id;
  const ack: Ack = await sending;
  const acked: [number, string] = [ack.seq, ack.id];
  // @ts-expect-error: text only
  void chat.send(42);
  const mentionable: string[] = members.flatMap((m: Member) => (m.sender === undefined ? [] : [m.sender]));
  const sendOptions: SendOptions = { replyTo: ack.seq, mentions: mentionable };
  const reply: Ack = await chat.send("a reply", sendOptions);
  const quoted: Quote | undefined = messages[0].replyTo;
  render(`${reply.seq} ${quoted?.seq} ${quoted?.from} ${quoted?.text} ${quoted?.deleted}`);
  const edit: Ack = await chat.edit(ack.seq, "hello again");
  const removal: Ack = await chat.delete(ack.seq);
  render(`${edit.seq} ${removal.seq}`);
  // @ts-expect-error: a message is named by its number
  void chat.edit("1", "text");

  // Reactions: add, take back, and who reacted, page by page.
  const reacted: ReactionAck = await chat.react(ack.seq, "👍");
  const mineNow: string[] = reacted.mine;
  const unreacted: Ack = await chat.unreact(ack.seq, "👍");
  render(`${reacted.seq} ${reacted.id} ${mineNow} ${unreacted.seq}`);
  const reactorsOptions: ReactorsOptions = { after: 0, limit: 50 };
  let reactorsPage: ReactorsPage = await chat.reactions(ack.seq);
  while (reactorsPage.next !== null) {
    reactorsPage.reactors.forEach((r: Reactor) => render(`${r.from} ${r.sender} ${r.reaction} ${r.at}`));
    reactorsPage = await chat.reactions(ack.seq, { ...reactorsOptions, after: reactorsPage.next });
  }
  // @ts-expect-error: a reaction is a string
  void chat.react(ack.seq, 1);
  // @ts-expect-error: the message's number comes first
  void chat.reactions({ after: 0 });
  const typed: boolean = chat.typing();
  // Read state: marked by the page, for what it showed.
  const marked: boolean = chat.markRead(ack.seq);
  const markedAll: boolean = chat.markRead();
  const mentioned: boolean = chat.mentionsMe(messages[0]);
  render(`${marked} ${markedAll} ${mentioned} ${chat.mentionsMe({ mentions: ["AAAAAAAAAAAAAAAA"] })}`);
  // @ts-expect-error: a message is named by its number
  chat.markRead("3");
  // @ts-expect-error: mentions name sender ids, not members
  void chat.send("hi", { mentions: [members[0]] });
  render(`${clientId} ${acked} ${typed} ${chat.isMine({ sender: "x" })} ${chat.isMine(messages[0])}`);

  // Older messages and more members.
  const historyOptions: HistoryOptions = { room: "lobby", before: 10, limit: 50 };
  const page: HistoryPage = await chat.history(historyOptions);
  page.messages.forEach(show);
  const more: boolean = page.more;
  const membersOptions: MembersPageOptions = { after: 0, limit: 100 };
  const memberPage: MembersPage = await chat.membersPage(membersOptions);
  const after: number | null = memberPage.next;
  render(`${more} ${memberPage.members.length} ${memberPage.count} ${after}`);

  // More rooms on the same connection.
  const joinOptions: JoinOptions = { name: "Ann", maxMessages: 10, on: { message: show } };
  const other: Chat = await chat.join("other", joinOptions);
  other.leave();

  for (const off of offs) off();
  chat.close();
  render(`${version} ${protocol} ${normal} ${codes} ${again}`);
}
