// TypeScript declarations for tickroom.js (the Tickroom client library). The wire contract: docs/protocol.md.

/** A server message: an object with a string `type` and the fields of that type. */
export interface ServerMessage {
  type: string;
  [field: string]: unknown;
}

/** A client message (`{type: "input", seq, dx, dy}`, `{type: "roll"}`...). */
export interface ClientMessage {
  type: string;
  [field: string]: unknown;
}

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "message" | "error" | "close", listener: (event: any) => void,
    options?: unknown): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export const PROTOCOL_VERSION: 1;
export const RECONNECT_GRACE_MS: number;
export const REFUSAL_CLOSE_BASE: 4000;
/** Every close code a Tickroom node uses (or a client sees), and what it means. */
export const CLOSE_CODES: Readonly<Record<number, string>>;
/** Each handshake refusal code and its HTTP status (close code 4000 + status with `refusal=close`). */
export const REFUSALS: Readonly<Record<string, number>>;
/** In-session error codes after which the server closes the connection. */
export const CLOSING_ERRORS: ReadonlySet<string>;

export function closeReason(code: number): string;
export function errorFromClose(code: number, reason: string,
  lastError?: { code: string; message?: string } | null): TickroomError | null;

export class TickroomError extends Error {
  constructor(code: string, message?: string, details?: {
    closeCode?: number; status?: number; fatal?: boolean; cause?: unknown; matchFound?: MatchFound;
  });
  readonly name: "TickroomError";
  /** The protocol's code: `token_invalid`, `room_full`, `not_your_roll`... and the library's own:
   * `connect_failed`, `connection_lost`, `reconnect_failed`, `match_lost`, `aborted`, `not_connected`,
   * `ping_timeout`. */
  readonly code: string;
  /** The close code that carried it, if any (4401 for a refused token with `refusal=close`). */
  readonly closeCode?: number;
  /** The HTTP status of a handshake refusal. */
  readonly status?: number;
  /** False for an in-session `error` after which the connection goes on (a game's refusal, `bad_field`...). */
  readonly fatal: boolean;
  /** With `match_lost`: the new match the lobby offered instead. */
  readonly matchFound?: MatchFound;
}

export interface LobbyMessage extends ServerMessage {
  type: "lobby";
  status: "waiting" | "countdown" | "queued" | "recovering";
  mode: string;
  room: string | null;
  players: { id: string; name: string }[];
  countdown_ms: number | null;
}

export interface CountdownMessage extends ServerMessage {
  type: "countdown";
  room: string;
  ms: number;
}

export interface MatchFound extends ServerMessage {
  type: "match_found";
  room: string;
  mode: string;
  node: string;
  url: string;
  ticket: string;
  players: { id: string; name: string }[];
}

export interface Player {
  p: number;
  id: string;
  name: string;
  color?: string;
}

export interface Welcome extends ServerMessage {
  type: "welcome";
  v: number;
  room: string;
  mode: string;
  you: number | null;
  id: string;
  state: "waiting" | "countdown" | "running" | "finished";
  tick_ms: number | null;
  countdown_ms: number | null;
  players: Player[];
  spectator?: boolean;
}

export interface StateMessage extends ServerMessage {
  type: "state";
  tick: number;
  t: number;
  /** The room clock, on games on events. */
  now?: number;
}

export interface EventMessage extends ServerMessage {
  type: "event";
  kind: string;
}

export interface MatchEnd extends ServerMessage {
  type: "match_end";
  reason: string;
  duration_ms: number;
  match: string;
  ranking: ({ p: number; id: string; name: string; rank: number; score: number } & Record<string, unknown>)[];
}

export interface ReconnectingInfo {
  /** `drop`: the connection was lost; `reconnect`: the node said so (shutting down). */
  reason: "drop" | "reconnect";
  /** The close code of the lost connection. */
  code: number;
  graceMs: number;
}

export interface ReconnectedInfo {
  welcome: Welcome;
  downtimeMs: number;
  attempts: number;
}

export interface MatchOutcome {
  reason: "ended" | "left" | "error";
  error?: TickroomError;
}

export interface MatchHandlers {
  onState?: (state: StateMessage) => void;
  onEvent?: (event: EventMessage) => void;
  onEnd?: (end: MatchEnd) => void;
  onError?: (error: TickroomError) => void;
  onReconnecting?: (info: ReconnectingInfo) => void;
  onReconnected?: (info: ReconnectedInfo) => void;
  /** Every message of the game connection, before the specific callback. */
  onMessage?: (message: ServerMessage) => void;
}

export interface JoinOptions extends MatchHandlers {
  onLobby?: (lobby: LobbyMessage) => void;
  onCountdown?: (countdown: CountdownMessage) => void;
  /** A match's seat ticket, to come back to that match (the lobby waits for its recovery). */
  ticket?: string;
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** The node's base URL, `ws://HOST:PORT` or `wss://HOST`. */
  url: string;
  /** The player's HS256 JWT (claims sub, name, exp). */
  token: string;
  /** A WebSocket constructor, where there is no global one (Node 20 without --experimental-websocket). */
  WebSocket?: WebSocketConstructor;
  /** How long to try to come back after a drop (the server's grace, 30 s). */
  reconnectGraceMs?: number;
  /** Random numbers in [0, 1) for the retry jitter. */
  random?: () => number;
  /** How states come: "json" (default) or "delta" (binary deltas); `onState` gets full states either way. */
  encoding?: Encoding;
}

/** The state encodings of `hello` (docs/protocol.md "State encodings"). */
export type Encoding = "json" | "delta";
export const ENCODINGS: readonly Encoding[];

/** A MessagePack extension value. */
export class Ext {
  constructor(type: number, data: Uint8Array);
  readonly type: number;
  readonly data: Uint8Array;
}

/** One MessagePack value; maps as plain objects (or `Map`s with `ordered`), binary as Uint8Array. */
export function decodeMsgpack(bytes: ArrayBuffer | Uint8Array, ordered?: boolean): unknown;

/** One connection's side of the `delta` encoding: each binary frame in, the full state out. */
export class StateDecoder {
  constructor();
  /** The latest state, null before the first keyframe. */
  readonly state: StateMessage | null;
  decode(bytes: ArrayBuffer | Uint8Array): StateMessage;
}

export class TickroomClient {
  constructor(options: ClientOptions);
  readonly url: string;
  readonly token: string;
  readonly reconnectGraceMs: number;
  readonly encoding: Encoding;
  /** Queue in `/lobby` for `mode` (default `arena`); resolves once welcomed into the matched room. */
  join(mode?: string, options?: JoinOptions): Promise<Match>;
  /** Watch a room hosted by the node at `options.url` (default this client's): read-only, `you` null. */
  spectate(room: string, options?: MatchHandlers & { url?: string; signal?: AbortSignal }): Promise<Match>;
  /** Through `/lobby` until `match_found`, retrying as the protocol's "When to try again" says. */
  findMatch(mode: string, options?: {
    ticket?: string | null; deadline?: number; signal?: AbortSignal;
    onLobby?: (lobby: LobbyMessage) => void; onCountdown?: (countdown: CountdownMessage) => void;
  }): Promise<MatchFound>;
  /** `url` with the token and `refusal=close` in its query. */
  authorized(url: string): string;
}

/** A match's callbacks (`onState`, `onEnd`...) are its `MatchHandlers`, set as properties. */
export interface Match extends MatchHandlers {}
export class Match implements MatchHandlers {
  /** Your seat number `p` (null for a spectator). */
  readonly you: number | null;
  readonly room: string;
  readonly mode: string;
  /** Your player id (the token's `sub`). */
  readonly id: string | null;
  /** The seat ticket of the last `match_found`. */
  readonly ticket: string | null;
  readonly matchFound: MatchFound;
  readonly welcome: Welcome;
  readonly spectator: boolean;
  /** The players present, from `welcome` and the `join`/`leave` events. */
  readonly players: Player[];
  /** The latest state (or, on games on events, the welcome's `view` until the first state). */
  readonly state: StateMessage | null;
  /** The `match_end`, once it came. */
  readonly result: MatchEnd | null;
  readonly connected: boolean;
  readonly reconnecting: boolean;
  /** The current WebSocket (diagnostics; closing it looks like a lost connection to the match). */
  readonly socket: WebSocketLike | null;
  /** Settles when the match is over for this player: it ended, you left, or it failed. */
  readonly finished: Promise<MatchOutcome>;

  /** Send a game message; false while there is no connection (reconnecting, over). */
  send(message: ClientMessage): boolean;
  /** The round trip to the server in ms. */
  ping(timeoutMs?: number): Promise<number>;
  /** Give the seat up; resolves once closed. */
  leave(): Promise<MatchOutcome>;
}

export interface StateBufferOptions {
  /** How far behind the newest state to render (default 100 ms). */
  delayMs?: number;
  /** States kept (default 64). */
  maxStates?: number;
  /** The numeric fields of list entries to interpolate (default x, y). */
  fields?: string[];
  /** The clock of arrival and render times (default performance.now). */
  now?: () => number;
}

export class StateBuffer<S extends object = StateMessage> {
  constructor(options?: StateBufferOptions);
  delayMs: number;
  readonly maxStates: number;
  readonly fields: string[];
  /** Oldest first. */
  readonly states: { state: S; at: number }[];
  readonly size: number;
  readonly latest: S | null;
  push(state: S, arrivedAt?: number): void;
  clear(): void;
  /** The view at `renderTime - delayMs`, interpolated (it keeps the older state's `tick`); null before any state. */
  at(renderTime?: number): S | null;
  /** The `tick` of the last view `at()` gave: the arena's `fire` sends it as `seen_tick` (lag compensation). */
  readonly shownTick: number | null;
  blend(from: S, to: S, alpha: number): S;
}

export class InputPredictor<M extends ClientMessage = ClientMessage> {
  constructor(options?: { firstSeq?: number; maxPending?: number });
  readonly nextSeq: number;
  /** The highest `seq` a state acknowledged. */
  readonly acknowledged: number;
  /** Unacknowledged messages, oldest first. */
  readonly pending: (M & { seq: number })[];
  /** `message` with the next `seq`, kept until acknowledged. */
  stamp(message: M): M & { seq: number };
  /** Drop the inputs up to `seq`; the ones still pending. */
  acknowledge(seq: number | undefined): (M & { seq: number })[];
  /** The inputs to apply again on top of `you`'s position in `state`. */
  reconcile(state: { players?: { p: number; seq?: number }[] } | null | undefined, you: number | null):
    (M & { seq: number })[];
  reset(): void;
}
