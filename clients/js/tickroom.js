/**
 * Tickroom client library: matchmaking through the lobby, one game session, reconnecting by itself, and the
 * two helpers a real-time game client needs (interpolation between states, prediction of its own inputs).
 * One ES module without dependencies, for browsers and Node >= 20. The wire contract is docs/protocol.md.
 *
 * @example
 *   import { TickroomClient } from "./tickroom.js";
 *   const client = new TickroomClient({ url: "wss://play.example.com", token });
 *   const match = await client.join("arena", { onLobby: (lobby) => show(lobby.status) });
 *   match.onState = (state) => buffer.push(state);
 *   match.onEnd = (end) => showRanking(end.ranking);
 *   match.send({ type: "input", seq: 1, dx: 1, dy: 0 });
 *
 * API
 * - `new TickroomClient({url, token, WebSocket?, reconnectGraceMs?, random?, encoding?})`: `url` is the node's
 *   base (`ws://HOST:PORT`); `WebSocket` a constructor with the WHATWG interface, needed where there is no global
 *   one (Node 20 without `--experimental-websocket`); `encoding` how states come: `"json"` (default) or
 *   `"delta"` (binary deltas, a tenth of the bytes for the arena; `onState` gets the same full states either way).
 * - `StateDecoder` (`decode(bytes)` → the full state) and `decodeMsgpack(bytes)`: the `delta` encoding by hand.
 * - `client.join(mode, {onLobby, onCountdown, onState, onEvent, onEnd, onError, onReconnecting,
 *   onReconnected, ticket, signal})` → `Promise<Match>`: queues in `/lobby`, resolves once `match_found` came
 *   and the game connection is open and welcomed. Rejects with a `TickroomError`.
 * - `client.spectate(room, handlers)` → `Promise<Match>` (read-only, `you` null, no automatic reconnect).
 * - `Match`: `you`, `room`, `mode`, `id`, `ticket`, `welcome`, `players`, `state` (latest), `result`
 *   (the `match_end`), `connected`; callbacks `onState`, `onEvent`, `onEnd`, `onError`, `onReconnecting`,
 *   `onReconnected`, `onMessage` (messages that come before a callback is set are kept for it, the latest
 *   state only); `send(message)` (false while reconnecting), `ping()` → round trip ms, `leave()`, and
 *   `finished`: a promise of `{reason: "ended"|"left"|"error", error?}`.
 * - Reconnecting follows the table "When to try again": after a drop (or a refused `/game`) back through
 *   `/lobby` with the match's ticket after 0.2 s, 0.5 s, then every 1 s; after `reconnect`, after `retry_ms`;
 *   `recovering` is waited through; `seat_lost`, `lobby_unavailable`, `capacity` (after its `retry_ms`),
 *   `already_connected` and
 *   `already_in_match` are retried as documented; ±50 % jitter. After the reconnect grace (30 s) it gives up
 *   with `onError(TickroomError("reconnect_failed"))`.
 * - `TickroomError`: `code` (the protocol's code), `message`, `closeCode`, `status`, `fatal`.
 *   `CLOSE_CODES` / `closeReason(code)`: what each close code means; `REFUSALS`: each handshake code's status.
 * - `StateBuffer`: `push(state, arrivedAt?)`, `at(renderTime?)`: the view `delayMs` behind, with the numeric
 *   `x`/`y` of list entries (matched by `id`, else `p`) interpolated between the two states around it.
 * - `InputPredictor`: `stamp(message)` gives it the next `seq` and keeps it; `reconcile(state, you)` drops the
 *   inputs the player's `seq` acknowledges and returns the rest, to apply again on top of the server's state.
 */

export const PROTOCOL_VERSION = 1;
/** The server's reconnect grace (TICKROOM_RECONNECT_GRACE_S): how long a dropped player keeps their seat. */
export const RECONNECT_GRACE_MS = 30000;
/** A handshake refused over WebSocket (`refusal=close`) closes with this plus the HTTP status. */
export const REFUSAL_CLOSE_BASE = 4000;

/** Every close code a Tickroom node uses (or a client sees), and what it means. */
export const CLOSE_CODES = Object.freeze({
  1000: "normal: after leave, about 2 s after match_end, after match_cancelled, or (lobby) after match_found",
  1001: "going away: the server is shutting down (a reconnect message came first), or the room was taken over " +
    "while its node stalled (room_closed)",
  1005: "closed without a status code",
  1006: "dropped: the connection was lost or could not be opened (no close frame)",
  1008: "policy: the error sent just before says why",
  1009: "message too big: a frame over 4096 bytes",
  1011: "server error: the room crashed, the server failed, or the client stopped answering pings",
  4400: "handshake refused (400): room_required, bad_room_id or unknown_mode",
  4401: "handshake refused (401): token_missing, token_invalid, token_expired, ticket_missing, ticket_invalid " +
    "or ticket_expired",
  4403: "handshake refused (403): origin_not_allowed, ticket_wrong_room or not_in_room",
  4404: "handshake refused (404): room_not_found or not_found",
  4421: "handshake refused (421): wrong_node, the room is hosted by another node",
  4503: "handshake refused (503): lobby_unavailable or node_draining",
});

/** Each handshake refusal code and its HTTP status (close code = 4000 + status with `refusal=close`). */
export const REFUSALS = Object.freeze({
  token_missing: 401, token_invalid: 401, token_expired: 401, ticket_missing: 401, ticket_invalid: 401,
  ticket_expired: 401, origin_not_allowed: 403, ticket_wrong_room: 403, not_in_room: 403, room_not_found: 404,
  wrong_node: 421, lobby_unavailable: 503, node_draining: 503, room_required: 400, bad_room_id: 400,
  unknown_mode: 400, not_found: 404,
});

/** In-session error codes after which the server closes the connection (docs/protocol.md, `error`). */
export const CLOSING_ERRORS = Object.freeze(new Set([
  "hello_required", "unsupported_version", "unsupported_encoding", "rate_limited", "room_full", "match_cancelled", "room_in_progress",
  "room_closed", "already_connected", "server_full", "room_crashed", "internal_error", "not_in_room",
  "already_in_match",
]));

/** What a close code means, in words. */
export function closeReason(code) {
  const known = CLOSE_CODES[code];
  if (known !== undefined) return known;
  if (code >= 4000 && code <= 4999) return `handshake refused (${code - REFUSAL_CLOSE_BASE})`;
  return `close code ${code}`;
}

/** A failure with the protocol's error `code` (handshake refusals, `error` messages, close codes). */
export class TickroomError extends Error {
  /**
   * @param {string} code
   * @param {string} [message]
   * @param {{closeCode?: number, status?: number, fatal?: boolean, cause?: unknown, matchFound?: object}} [details]
   */
  constructor(code, message, details = {}) {
    super(message || code, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "TickroomError";
    this.code = code;
    this.closeCode = details.closeCode;
    this.status = details.status ?? REFUSALS[code];
    this.fatal = details.fatal ?? true;
    if (details.matchFound !== undefined) this.matchFound = details.matchFound;
  }
}

/**
 * The error a close says, or null for a close that is not a refusal: a 4xxx close's reason is the error code
 * (the `error` message that came before it, if any, gives the text).
 */
export function errorFromClose(code, reason, lastError) {
  if (!(code >= 4000 && code <= 4999)) return null;
  const errorCode = reason || lastError?.code || `refused_${code - REFUSAL_CLOSE_BASE}`;
  const message = lastError?.code === errorCode ? lastError.message : closeReason(code);
  return new TickroomError(errorCode, message, { closeCode: code, status: code - REFUSAL_CLOSE_BASE });
}

// -- connections ------------------------------------------------------------------------------------------

const CONNECTING = 0;
const OPEN = 1;

function withQuery(url, params) {
  const parsed = new URL(url);
  for (const [key, value] of Object.entries(params)) parsed.searchParams.set(key, value);
  return parsed.toString();
}

function textOf(data) {
  if (typeof data === "string") return data;
  return new TextDecoder().decode(data);
}

// -- state encodings (docs/protocol.md "State encodings") --------------------------------------------------

/** The state encodings a client may ask for in `hello`. */
export const ENCODINGS = Object.freeze(["json", "delta"]);

/** A MessagePack extension value: `type` and its raw `data`. */
export class Ext {
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
}

const UTF8 = new TextDecoder();

/**
 * Decode one MessagePack value (`bytes`: a Uint8Array or ArrayBuffer). Maps become plain objects, or `Map`s (keys
 * kept as they are, in order) with `ordered`; binary becomes a Uint8Array, extensions `Ext`, 64-bit integers
 * Numbers. Throws on truncated or unknown input.
 */
export function decodeMsgpack(bytes, ordered = false) {
  return decodeValue(bytes, ordered, false);
}

/** A float inside a delta (where an integer is a step in tenths): the value, as `decodeValue` gives it. */
class Float {
  constructor(value) {
    this.value = value;
  }
}

function decodeValue(bytes, ordered, floats) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = 0;
  const need = (n) => {
    if (at + n > data.length) throw new RangeError("MessagePack value cut short");
    const start = at;
    at += n;
    return start;
  };
  const map = (n) => {
    if (ordered) {
      const out = new Map();
      for (let i = 0; i < n; i++) {
        const key = value();
        out.set(key, value());
      }
      return out;
    }
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = String(value());
      const item = value();
      if (key === "__proto__") Object.defineProperty(out, key, { value: item, enumerable: true, writable: true, configurable: true });
      else out[key] = item;
    }
    return out;
  };
  const array = (n) => {
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = value();
    return out;
  };
  const str = (n) => UTF8.decode(data.subarray(need(n), at));
  const ext = (n) => {
    const type = view.getInt8(need(1));
    return new Ext(type, data.slice(need(n), at));
  };
  function value() {
    const byte = data[need(1)];
    if (byte <= 0x7f) return byte;
    if (byte >= 0xe0) return byte - 0x100;
    if (byte <= 0x8f) return map(byte & 0x0f);
    if (byte <= 0x9f) return array(byte & 0x0f);
    if (byte <= 0xbf) return str(byte & 0x1f);
    switch (byte) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return data.slice(need(data[need(1)]), at);
      case 0xc5: return data.slice(need(view.getUint16(need(2))), at);
      case 0xc6: return data.slice(need(view.getUint32(need(4))), at);
      case 0xc7: return ext(data[need(1)]);
      case 0xc8: return ext(view.getUint16(need(2)));
      case 0xc9: return ext(view.getUint32(need(4)));
      case 0xca: return floats ? new Float(view.getFloat32(need(4))) : view.getFloat32(need(4));
      case 0xcb: return floats ? new Float(view.getFloat64(need(8))) : view.getFloat64(need(8));
      case 0xcc: return data[need(1)];
      case 0xcd: return view.getUint16(need(2));
      case 0xce: return view.getUint32(need(4));
      case 0xcf: return Number(view.getBigUint64(need(8)));
      case 0xd0: return view.getInt8(need(1));
      case 0xd1: return view.getInt16(need(2));
      case 0xd2: return view.getInt32(need(4));
      case 0xd3: return Number(view.getBigInt64(need(8)));
      case 0xd4: return ext(1);
      case 0xd5: return ext(2);
      case 0xd6: return ext(4);
      case 0xd7: return ext(8);
      case 0xd8: return ext(16);
      case 0xd9: return str(data[need(1)]);
      case 0xda: return str(view.getUint16(need(2)));
      case 0xdb: return str(view.getUint32(need(4)));
      case 0xdc: return array(view.getUint16(need(2)));
      case 0xdd: return array(view.getUint32(need(4)));
      case 0xde: return map(view.getUint16(need(2)));
      case 0xdf: return map(view.getUint32(need(4)));
      default: throw new RangeError(`0x${byte.toString(16)} starts no MessagePack value`);
    }
  }
  const result = value();
  if (at !== data.length) throw new RangeError("bytes left after a MessagePack value");
  return result;
}

const EXT_REMOVED = 0;
const EXT_VALUE = 1;

// An object's fields in the server's order, kept only where JavaScript lists them otherwise (names that read as
// array indices come first in a JavaScript object): a delta names a field by its index in that order.
const FIELDS = new WeakMap();
const INDEX_NAME = /^(?:0|[1-9][0-9]*)$/;

function fieldsOf(object) {
  return FIELDS.get(object) ?? Object.keys(object);
}

function setField(object, name, value) {
  if (name === "__proto__") Object.defineProperty(object, name, { value, enumerable: true, writable: true, configurable: true });
  else object[name] = value;
}

/** A value decoded by `decodeValue` (ordered maps, wrapped floats), as JSON would have given it (plain objects). */
function plain(value) {
  if (value instanceof Float) return value.value;
  if (value instanceof Map) {
    const out = {};
    const names = [];
    let indexNames = false;
    for (const [key, item] of value) {
      const name = String(key);
      setField(out, name, plain(item));
      names.push(name);
      if (INDEX_NAME.test(name)) indexNames = true;
    }
    if (indexNames) FIELDS.set(out, names);
    return out;
  }
  if (Array.isArray(value)) return value.map(plain);
  return value;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) && !(value instanceof Uint8Array);
}

/** The field naming each element of a list of objects: "id", else "p"; null when not every element has it. */
function listKey(items) {
  for (const name of ["id", "p"]) {
    if (items.every((item) => isObject(item) && Object.hasOwn(item, name))) return name;
  }
  return null;
}

/** A value sent whole: as it is, or inside ext type 1. */
function whole(change) {
  if (change instanceof Ext) {
    if (change.type === EXT_VALUE) return plain(decodeValue(change.data, true, false));
    throw new RangeError(`unknown extension type ${change.type} in a delta`);
  }
  return plain(change);
}

function applyChange(old, change) {
  // An integer on the wire moves a number by that many tenths; a float is the new value.
  if (typeof change === "number") return typeof old === "number" ? (Math.round(old * 10) + change) / 10 : change;
  if (change instanceof Map) {
    if (Array.isArray(old)) return applyList(old, change);
    if (isObject(old)) return applyObject(old, change);
  }
  return whole(change);
}

function isRemoved(change) {
  return change instanceof Ext && change.type === EXT_REMOVED;
}

function applyObject(old, changes) {
  const out = { ...old };
  let fields = null; // old's fields in the server's order, listed when a change needs them
  const removed = new Set();
  const added = [];
  for (const [key, change] of changes) {
    let name;
    if (typeof key === "number") {
      fields ??= fieldsOf(old);
      if (!Number.isInteger(key) || key < 0 || key >= fields.length) {
        throw new RangeError(`a change to field ${key} of an object with ${fields.length} fields`);
      }
      name = fields[key];
    } else {
      name = String(key);
    }
    if (isRemoved(change)) {
      delete out[name];
      removed.add(name);
    } else if (Object.hasOwn(out, name)) {
      setField(out, name, applyChange(out[name], change));
    } else {
      setField(out, name, whole(change));
      added.push(name);
    }
  }
  if (FIELDS.has(old) || added.some((name) => INDEX_NAME.test(name))) {
    FIELDS.set(out, (fields ?? fieldsOf(old)).filter((name) => !removed.has(name)).concat(added));
  }
  return out;
}

function applyList(old, changes) {
  const name = old.length ? listKey(old) : null;
  if (old.length && name === null) throw new RangeError("changes to a list whose elements have no ids");
  const byId = new Map();
  for (const [key, change] of changes) byId.set(String(key), change);
  const known = new Set();
  const out = [];
  for (const item of old) {
    const id = String(item[name]);
    known.add(id);
    const change = byId.get(id);
    if (change === undefined) out.push(item);
    else if (!isRemoved(change)) out.push(applyChange(item, change));
  }
  for (const [key, change] of changes) {
    if (known.has(String(key)) || isRemoved(change)) continue;
    // A new element: a map is its changes against the element before it, when there is one.
    out.push(change instanceof Map && out.length ? applyObject(out[out.length - 1], change) : whole(change));
  }
  return out;
}

/**
 * One connection's side of the `delta` encoding: `decode(bytes)` takes each binary frame and returns the full
 * state, the same object JSON would have given. Unchanged parts are shared with the previous state (treat
 * states as read-only). A new connection needs a new decoder (it starts with a keyframe).
 */
export class StateDecoder {
  constructor() {
    this.state = null;
  }

  decode(bytes) {
    const value = decodeValue(bytes, true, true);
    if (value instanceof Map) {
      this.state = plain(value);
      return this.state;
    }
    if (!Array.isArray(value) || value.length !== 3 || !(value[2] instanceof Map)) {
      throw new RangeError("a state frame is a keyframe (map) or a delta ([tick step, t step, changes])");
    }
    if (this.state === null) throw new RangeError("a delta arrived before any keyframe");
    const previous = this.state;
    const state = applyObject(previous, value[2]);
    state.tick = previous.tick + plain(value[0]);
    state.t = previous.t + plain(value[1]);
    this.state = state;
    return state;
  }
}

/** How long after an `error` a connection counts as closed (1006) if no `close` came. */
const ERROR_CLOSE_WAIT_MS = 100;

/**
 * One WebSocket connection, JSON in and out. `handlers.message(msg)` for every message, `handlers.open()`,
 * `handlers.close({code, reason, opened})` once. Frames that are not JSON objects are ignored.
 */
class Link {
  constructor(WebSocketImpl, url, handlers, states = null) {
    this.handlers = handlers;
    this.opened = false;
    this.done = false;
    this.states = states; // a StateDecoder for binary frames (the `delta` encoding), else they are ignored
    this.socket = new WebSocketImpl(url);
    this.socket.binaryType = "arraybuffer";
    this.socket.addEventListener("open", () => {
      if (this.done) return;
      this.opened = true;
      this.handlers.open?.();
    });
    this.socket.addEventListener("message", (event) => {
      if (this.done) return;
      let message;
      try {
        if (typeof event.data === "string" || this.states === null) message = JSON.parse(textOf(event.data));
        else message = this.states.decode(event.data);
      } catch {
        return;
      }
      if (message !== null && typeof message === "object") this.handlers.message?.(message);
    });
    this.socket.addEventListener("close", (event) => this._closed(event.code ?? 1006, event.reason ?? ""));
    // The WHATWG WebSocket fires `close` right after `error`, but Node 20's own (undici 6) fires only `error`
    // when the connection cannot be opened (refused, reset): without this, a join or a reconnect would wait for
    // ever on a node that is down.
    this.socket.addEventListener("error", () => {
      if (this.done) return;
      clearTimeout(this.errorTimer);
      this.errorTimer = setTimeout(() => this._closed(1006, ""), ERROR_CLOSE_WAIT_MS);
    });
  }

  _closed(code, reason) {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.closeTimer);
    clearTimeout(this.errorTimer);
    this.handlers.close?.({ code, reason, opened: this.opened });
  }

  send(message) {
    if (this.done || this.socket.readyState !== OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /** Close, and count it closed after `graceMs` even if the other side never answers. */
  close(code = 1000, reason = "", graceMs = 2000) {
    if (this.done) return;
    try {
      if (this.socket.readyState === CONNECTING || this.socket.readyState === OPEN) this.socket.close(code, reason);
    } catch {
      // already closing
    }
    clearTimeout(this.closeTimer);
    this.closeTimer = setTimeout(() => this._closed(1006, "closed by the client"), graceMs);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function call(handler, ...args) {
  if (typeof handler !== "function") return;
  try {
    handler(...args);
  } catch (error) {
    // The client's bug must not break the connection's bookkeeping; it still surfaces as uncaught.
    setTimeout(() => {
      throw error;
    }, 0);
  }
}

const DROP_DELAYS_MS = [200, 500, 1000];
const BUSY_DELAYS_MS = [1000, 2000, 4000];
const LOBBY_UNAVAILABLE_DELAYS_MS = [1000, 2000, 4000, 5000];

function nth(delays, index) {
  return delays[Math.min(index, delays.length - 1)];
}

/** Codes with which a refused `/game` (or a lobby) means: go back through the lobby at once. */
const LOBBY_AT_ONCE = new Set(["ticket_expired", "not_in_room", "room_not_found", "wrong_node", "ticket_wrong_room"]);
/** Codes after which trying again later may work (a node or Redis that is down, a connection still closing). */
const TRY_LATER = new Set(["lobby_unavailable", "node_draining"]);
const CAPACITY_RETRY_MS = 5000; // a `capacity` error without `retry_ms`
const BUSY = new Set(["already_connected", "already_in_match"]);

// -- the client -----------------------------------------------------------------------------------------

export class TickroomClient {
  /**
   * @param {{url: string, token: string, WebSocket?: Function, reconnectGraceMs?: number,
   *          random?: () => number}} options
   */
  constructor(options) {
    if (!options || typeof options.url !== "string") throw new TypeError("TickroomClient needs options.url");
    if (typeof options.token !== "string" || !options.token) throw new TypeError("TickroomClient needs options.token");
    this.url = options.url.replace(/\/+$/, "");
    this.token = options.token;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.WebSocket !== "function") {
      throw new TypeError("no WebSocket here: pass options.WebSocket (Node 20: or run with --experimental-websocket)");
    }
    this.reconnectGraceMs = options.reconnectGraceMs ?? RECONNECT_GRACE_MS;
    this.random = options.random ?? Math.random;
    this.encoding = options.encoding ?? "json";
    if (!ENCODINGS.includes(this.encoding)) {
      throw new TypeError(`options.encoding must be one of ${ENCODINGS.join(", ")}, not ${String(this.encoding)}`);
    }
  }

  /** `url` with the token and `refusal=close` (refusals as a close code and reason, which any client can read). */
  authorized(url) {
    return withQuery(url, { token: this.token, refusal: "close" });
  }

  jitter(ms) {
    return ms * (0.5 + this.random());
  }

  /**
   * Queue for a match of `mode` and join it: resolves with the `Match` once welcomed into the room.
   * @param {string} [mode]
   * @param {object} [options]
   */
  async join(mode = "arena", options = {}) {
    const found = await this.findMatch(mode, { ...options, firstJoin: true });
    const match = new Match(this, found, options);
    await match._connectFirst(found, options.signal);
    return match;
  }

  /** Watch `room` (hosted by the node at `url`, default this client's): a read-only `Match`. */
  async spectate(room, options = {}) {
    const base = (options.url ?? this.url).replace(/\/+$/, "");
    const found = { room, mode: null, url: `${base}/game?room=${encodeURIComponent(room)}&spectate=1`, ticket: null };
    const match = new Match(this, found, { ...options, spectator: true });
    await match._connectFirst(found, options.signal);
    return match;
  }

  /**
   * Through `/lobby` until `match_found`, retrying as docs/protocol.md "When to try again" says.
   * `deadline` (ms since epoch) bounds it; `ticket` is a match's seat ticket when coming back to it.
   * @returns {Promise<object>} the `match_found` message
   */
  async findMatch(mode, options = {}) {
    let ticket = options.ticket ?? null;
    let drops = 0;
    let busy = 0;
    let everOpened = false;
    for (;;) {
      const outcome = await this._lobbyOnce(mode, ticket, options);
      if (outcome.found) return outcome.found;
      ticket = outcome.ticket;
      everOpened ||= outcome.opened;
      if (outcome.error && outcome.fatal) throw outcome.error;
      if (options.firstJoin && !everOpened && outcome.kind === "drop") {
        throw new TickroomError("connect_failed", `could not connect to ${this.url}/lobby`, { closeCode: outcome.code });
      }
      let delay;
      if (outcome.kind === "reconnect") delay = outcome.delayMs;
      else if (outcome.kind === "busy") delay = this.jitter(nth(BUSY_DELAYS_MS, busy++));
      else delay = this.jitter(nth(DROP_DELAYS_MS, drops++));
      if (options.deadline !== undefined && Date.now() + delay >= options.deadline) {
        throw new TickroomError("reconnect_failed", "the reconnect grace ran out while joining the lobby",
          { cause: outcome.error });
      }
      await sleep(delay, options.signal);
    }
  }

  /** One `/lobby` connection: resolves `{found}` or why to try again (`kind`, `error`, `fatal`). */
  _lobbyOnce(mode, ticket, options) {
    const { onLobby, onCountdown, signal, deadline } = options;
    return new Promise((resolve) => {
      let lastError = null;
      let reconnectMs = null;
      let unavailable = 0;
      let fatal = null;
      let found = null;
      let retryTimer;
      let deadlineTimer;
      const join = () => link.send(ticket ? { type: "join", v: PROTOCOL_VERSION, mode, ticket }
        : { type: "join", v: PROTOCOL_VERSION, mode });
      const finish = (outcome) => {
        clearTimeout(retryTimer);
        clearTimeout(deadlineTimer);
        signal?.removeEventListener("abort", onAbort);
        resolve({ ticket, ...outcome });
      };
      const onAbort = () => {
        fatal = new TickroomError("aborted", "the join was aborted", { cause: signal.reason });
        link.send({ type: "leave" });
        link.close(1000, "aborted", 500);
      };
      const link = new Link(this.WebSocket, this.authorized(`${this.url}/lobby`), {
        open: join,
        message: (message) => {
          switch (message.type) {
            case "lobby":
              call(onLobby, message);
              break;
            case "countdown":
              call(onCountdown, message);
              break;
            case "match_found":
              found = message;
              link.close(1000, "match found", 500);
              finish({ found, opened: true });
              break;
            case "reconnect":
              reconnectMs = Number(message.retry_ms) || 1000;
              break;
            case "error":
              lastError = message;
              if (message.code === "seat_lost") {
                join();
              } else if (message.code === "ticket_invalid") {
                ticket = null; // the next join goes without it
                join();
              } else if (message.code === "lobby_unavailable") {
                clearTimeout(retryTimer);
                retryTimer = setTimeout(join, this.jitter(nth(LOBBY_UNAVAILABLE_DELAYS_MS, unavailable++)));
              } else if (message.code === "capacity") {
                // Every node is full: not in line; join again on this connection after the time it says.
                clearTimeout(retryTimer);
                retryTimer = setTimeout(join, this.jitter(Number(message.retry_ms) || CAPACITY_RETRY_MS));
              } else if (!BUSY.has(message.code)) {
                fatal = new TickroomError(message.code, message.message);
                link.close(1000, "refused", 500);
              }
              break;
            default:
              break;
          }
        },
        close: ({ code, reason, opened }) => {
          if (found) return;
          const refusal = errorFromClose(code, reason, lastError);
          if (fatal && !(refusal && fatal.code === refusal.code)) {
            finish({ error: fatal, fatal: true, opened });
          } else if (refusal) {
            const retry = TRY_LATER.has(refusal.code);
            finish({ kind: "drop", error: refusal, fatal: !retry, opened: true, code });
          } else if (reconnectMs !== null) {
            finish({ kind: "reconnect", delayMs: reconnectMs, opened, code });
          } else if (lastError && BUSY.has(lastError.code)) {
            finish({ kind: "busy", error: new TickroomError(lastError.code, lastError.message), opened, code });
          } else {
            finish({ kind: "drop", error: new TickroomError("connection_lost", closeReason(code), { closeCode: code }),
              opened, code });
          }
        },
      });
      if (signal?.aborted) onAbort();
      else signal?.addEventListener("abort", onAbort, { once: true });
      if (deadline !== undefined) {
        deadlineTimer = setTimeout(() => {
          fatal = new TickroomError("reconnect_failed", "the reconnect grace ran out while waiting in the lobby");
          link.close(1000, "gave up", 500);
        }, Math.max(0, deadline - Date.now()));
      }
    });
  }
}

// -- a match --------------------------------------------------------------------------------------------

const HANDLERS = ["onState", "onEvent", "onEnd", "onError", "onReconnecting", "onReconnected", "onMessage"];
const PENDING_MAX = 256;

/** One player's place in one room, across reconnects. Made by `TickroomClient.join`. */
export class Match {
  constructor(client, found, options = {}) {
    this.client = client;
    this.room = found.room;
    this.mode = found.mode;
    this.ticket = found.ticket;
    this.matchFound = found;
    this.spectator = Boolean(options.spectator);
    this.you = null;
    this.id = null;
    this.welcome = null;
    this.players = [];
    this.state = null;
    this.result = null;
    this.connected = false;
    this.reconnecting = false;
    this._handlers = {};
    this._pending = [];
    this._link = null;
    this._lastError = null;
    this._reconnectMs = null;
    this._leaving = false;
    this._done = false;
    this._pings = new Map();
    this._abort = new AbortController();
    /** @type {Promise<{reason: "ended"|"left"|"error", error?: TickroomError}>} */
    this.finished = new Promise((resolve) => {
      this._finish = resolve;
    });
    for (const name of HANDLERS) {
      if (typeof options[name] === "function") this._handlers[name] = options[name];
    }
  }

  /** The current WebSocket (diagnostics; closing it looks like a dropped connection to the match). */
  get socket() {
    return this._link?.socket ?? null;
  }

  /** Send a game message (`{type: ...}`); false when there is no connection right now (reconnecting, over). */
  send(message) {
    if (!this.connected || this._link === null) return false;
    return this._link.send(message);
  }

  /** Round trip to the server in ms (via `ping`/`pong`). */
  ping(timeoutMs = 5000) {
    const t = Math.random() * 1e9;
    const sentAt = performance.now();
    return new Promise((resolve, reject) => {
      if (!this.send({ type: "ping", t })) {
        reject(new TickroomError("not_connected", "the match has no connection right now"));
        return;
      }
      const timer = setTimeout(() => {
        this._pings.delete(t);
        reject(new TickroomError("ping_timeout", "no pong in time"));
      }, timeoutMs);
      this._pings.set(t, () => {
        clearTimeout(timer);
        resolve(performance.now() - sentAt);
      });
    });
  }

  /** Give the seat up (`leave`); resolves once the connection is closed. */
  async leave() {
    if (this._done) return this.finished;
    this._leaving = true;
    this._abort.abort(new TickroomError("left", "the player left"));
    if (this._link !== null && this.connected) {
      this._link.send({ type: "leave" });
      this._link.close(1000, "leave", 2000);
    } else {
      this._end({ reason: "left" });
    }
    return this.finished;
  }

  // Callbacks are properties; messages that came before a callback was set wait for it.
  _emit(name, payload) {
    const handler = this._handlers[name];
    if (handler) {
      call(handler, payload);
      return;
    }
    if (name === "onState") {
      this._pending = this._pending.filter(([kind]) => kind !== "onState");
    }
    if (this._pending.length < PENDING_MAX) this._pending.push([name, payload]);
  }

  _setHandler(name, handler) {
    this._handlers[name] = typeof handler === "function" ? handler : undefined;
    if (!this._handlers[name] || !this._pending.some(([kind]) => kind === name)) return;
    queueMicrotask(() => {
      const ready = this._pending.filter(([kind]) => kind === name && this._handlers[kind]);
      this._pending = this._pending.filter(([kind]) => kind !== name || !this._handlers[kind]);
      for (const [kind, payload] of ready) call(this._handlers[kind], payload);
    });
  }

  _end(outcome) {
    if (this._done) return;
    this._done = true;
    this.connected = false;
    this.reconnecting = false;
    if (outcome.error) this._emit("onError", outcome.error);
    this._finish(outcome);
  }

  /** The first connection to the room; a refusal that the lobby can mend (an expired ticket, a node gone)
   * goes back through the lobby with the ticket, as a reconnect would. */
  async _connectFirst(found, signal) {
    const onAbort = () => this._abort.abort(new TickroomError("aborted", "the join was aborted", { cause: signal.reason }));
    if (signal?.aborted) onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const deadline = Date.now() + this.client.reconnectGraceMs;
    const backoff = { drops: 0, busy: 0 };
    try {
      for (;;) {
        const outcome = await this._open(found);
        if (outcome.welcomed) return;
        if (outcome.ended) {
          this._end({ reason: "ended" }); // over before this player got in: `result` holds its match_end
          return;
        }
        if (outcome.fatal || this.spectator) throw outcome.error;
        const delay = this._retryDelay(outcome, backoff);
        if (Date.now() + delay >= deadline) throw outcome.error;
        await sleep(delay, this._abort.signal);
        found = await this.client.findMatch(this.mode, { ticket: this.ticket, deadline, signal: this._abort.signal });
        this.room = found.room;
        this.ticket = found.ticket;
        this.matchFound = found;
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** How long to wait before going back through the lobby after a failed `/game` (see `_open`). */
  _retryDelay(outcome, backoff) {
    if (outcome.retry === "lobby") return 0;
    if (outcome.retry === "reconnect") return outcome.delayMs;
    if (outcome.retry === "busy") return this.client.jitter(nth(BUSY_DELAYS_MS, backoff.busy++));
    return this.client.jitter(nth(DROP_DELAYS_MS, backoff.drops++));
  }

  /**
   * Open `/game` at `found.url` and say hello: resolves `{welcomed: true}`, or why not (`error`, and how to
   * try again: `lobby` at once, after `delay` kind, or `fatal`).
   */
  _open(found) {
    return new Promise((resolve) => {
      let welcomed = false;
      let ended = false;
      let lastError = null;
      let reconnectMs = null;
      const encoding = this.client.encoding;
      const link = new Link(this.client.WebSocket, this.client.authorized(found.url), {
        open: () => link.send(encoding === "json" ? { type: "hello", v: PROTOCOL_VERSION }
          : { type: "hello", v: PROTOCOL_VERSION, encoding }),
        message: (message) => {
          if (welcomed) {
            this._onMessage(message);
          } else if (message.type === "welcome") {
            welcomed = true;
            this._link = link;
            this._lastError = null;
            this._reconnectMs = null;
            this._welcomed(message);
            resolve({ welcomed: true });
          } else if (message.type === "error") {
            lastError = message;
          } else if (message.type === "reconnect") {
            reconnectMs = Number(message.retry_ms) || 1000;
          } else if (message.type === "match_end") {
            // The match ended while this player was away: the server answers the hello with its `match_end`
            // and closes 1000. The match is over, not lost.
            ended = true;
            this.result = message;
            this._emit("onEnd", message);
          }
        },
        close: (closed) => {
          if (welcomed) {
            this._onClose(closed);
            return;
          }
          if (ended) {
            resolve({ welcomed: false, ended: true });
            return;
          }
          const abort = this._abort.signal;
          if (abort.aborted) {
            resolve({ welcomed: false, fatal: true, error: abort.reason });
            return;
          }
          const refusal = errorFromClose(closed.code, closed.reason, lastError)
            ?? (lastError ? new TickroomError(lastError.code, lastError.message, { closeCode: closed.code }) : null);
          if (refusal === null) {
            resolve({ welcomed: false, retry: reconnectMs === null ? "drop" : "reconnect", delayMs: reconnectMs,
              error: new TickroomError("connection_lost", closeReason(closed.code), { closeCode: closed.code }) });
          } else if (LOBBY_AT_ONCE.has(refusal.code)) {
            resolve({ welcomed: false, retry: "lobby", error: refusal });
          } else if (TRY_LATER.has(refusal.code) || (refusal.status ?? 0) >= 500) {
            resolve({ welcomed: false, retry: "drop", error: refusal });
          } else if (BUSY.has(refusal.code)) {
            resolve({ welcomed: false, retry: "busy", error: refusal });
          } else {
            resolve({ welcomed: false, fatal: true, error: refusal });
          }
        },
      }, encoding === "json" ? null : new StateDecoder());
      const abort = this._abort.signal;
      if (abort.aborted) link.close(1000, "aborted", 500);
      else abort.addEventListener("abort", () => { if (!welcomed) link.close(1000, "aborted", 500); }, { once: true });
    });
  }

  _welcomed(welcome) {
    this.welcome = welcome;
    this.you = welcome.you ?? null;
    this.id = welcome.id ?? null;
    this.room = welcome.room ?? this.room;
    this.mode = welcome.mode ?? this.mode;
    this.players = Array.isArray(welcome.players) ? [...welcome.players] : [];
    if (welcome.view && typeof welcome.view === "object") this.state = welcome.view;
    this.connected = true;
  }

  _onMessage(message) {
    this._emit("onMessage", message);
    switch (message.type) {
      case "state":
        this.state = message;
        this._emit("onState", message);
        break;
      case "event":
        if (message.kind === "join" && message.p !== undefined) {
          this.players = [...this.players.filter((player) => player.p !== message.p),
            { p: message.p, id: message.id, name: message.name, color: message.color }];
        } else if (message.kind === "leave") {
          this.players = this.players.filter((player) => player.p !== message.p);
        }
        this._emit("onEvent", message);
        break;
      case "match_end":
        this.result = message;
        this._emit("onEnd", message);
        break;
      case "error":
        if (CLOSING_ERRORS.has(message.code)) {
          this._lastError = message; // the close that follows ends the match with it
        } else {
          this._emit("onError", new TickroomError(message.code, message.message, { fatal: false }));
        }
        break;
      case "reconnect":
        this._reconnectMs = Number(message.retry_ms) || 1000;
        break;
      case "pong": {
        const answer = this._pings.get(message.t);
        this._pings.delete(message.t);
        answer?.();
        break;
      }
      default:
        break;
    }
  }

  _onClose({ code, reason }) {
    this.connected = false;
    this._link = null;
    if (this._leaving) {
      this._end({ reason: "left" });
    } else if (this.result !== null) {
      this._end({ reason: "ended" });
    } else if (this._lastError !== null && this._lastError.code !== "not_in_room") {
      this._end({ reason: "error", error: new TickroomError(this._lastError.code, this._lastError.message,
        { closeCode: code }) });
    } else if (this.spectator) {
      this._end({ reason: "error", error: new TickroomError("connection_lost", closeReason(code),
        { closeCode: code }) });
    } else {
      const cause = this._reconnectMs !== null ? "reconnect" : "drop";
      void this._recover(cause, this._reconnectMs, { code, reason });
    }
  }

  /** Back into the same seat through the lobby, within the reconnect grace. */
  async _recover(cause, firstDelayMs, closed) {
    const client = this.client;
    const lostAt = Date.now();
    const deadline = lostAt + client.reconnectGraceMs;
    const signal = this._abort.signal;
    this.reconnecting = true;
    this._emit("onReconnecting", { reason: cause, code: closed.code, graceMs: client.reconnectGraceMs });
    let delay = cause === "reconnect" ? firstDelayMs : client.jitter(DROP_DELAYS_MS[0]);
    const backoff = { drops: 1, busy: 0 };
    let attempts = 0;
    let lastError = null;
    try {
      for (;;) {
        if (Date.now() + delay >= deadline) break;
        await sleep(delay, signal);
        attempts += 1;
        const found = await client.findMatch(this.mode, { ticket: this.ticket, deadline, signal });
        if (found.room !== this.room) {
          // The match did not come back (the lobby seated us anew): this match is over for us.
          this._end({ reason: "error", error: new TickroomError("match_lost",
            `match ${this.room} could not be brought back; the lobby offered room ${found.room}`,
            { matchFound: found }) });
          return;
        }
        this.ticket = found.ticket;
        this.matchFound = found;
        const outcome = await this._open(found);
        if (outcome.ended) {
          this._end({ reason: "ended" }); // it ended while we were away: `result` and onEnd have its match_end
          return;
        }
        if (outcome.welcomed) {
          this.reconnecting = false;
          this._emit("onReconnected", { welcome: this.welcome, downtimeMs: Date.now() - lostAt, attempts });
          return;
        }
        lastError = outcome.error;
        if (outcome.fatal) {
          this._end({ reason: signal.aborted ? "left" : "error", error: signal.aborted ? undefined : outcome.error });
          return;
        }
        delay = this._retryDelay(outcome, backoff);
      }
    } catch (error) {
      if (signal.aborted) {
        this._end({ reason: "left" });
        return;
      }
      if (error instanceof TickroomError && error.code !== "reconnect_failed") {
        this._end({ reason: "error", error });
        return;
      }
      lastError = error;
    }
    this._end({ reason: "error", error: new TickroomError("reconnect_failed",
      `could not get back into room ${this.room} within the reconnect grace`, { cause: lastError ?? undefined }) });
  }
}

for (const name of HANDLERS) {
  Object.defineProperty(Match.prototype, name, {
    get() {
      return this._handlers[name];
    },
    set(handler) {
      this._setHandler(name, handler);
    },
    enumerable: true,
  });
}

// -- interpolation ----------------------------------------------------------------------------------------

function entryKey(entry) {
  if (entry === null || typeof entry !== "object") return undefined;
  if (entry.id !== undefined) return `id:${entry.id}`;
  if (entry.p !== undefined) return `p:${entry.p}`;
  return undefined;
}

/**
 * Recent states with their arrival times; `at(renderTime)` is the view `delayMs` behind, between the two
 * states around that moment: the older one, with the numeric `fields` (x, y) of each list entry moved toward
 * the same entry (same `id`, else same `p`) of the newer one. Entries only in the newer state appear once it
 * is reached; before the oldest state it shows the oldest, past the newest the newest (no extrapolation).
 */
export class StateBuffer {
  /**
   * @param {{delayMs?: number, maxStates?: number, fields?: string[], now?: () => number}} [options]
   */
  constructor(options = {}) {
    this.delayMs = options.delayMs ?? 100;
    this.maxStates = options.maxStates ?? 64;
    this.fields = options.fields ?? ["x", "y"];
    this.now = options.now ?? (() => performance.now());
    /** @type {{state: object, at: number}[]} oldest first */
    this.states = [];
    /** @type {number | null} the `tick` of the last view `at()` gave (null before any) */
    this.shownTick = null;
  }

  get size() {
    return this.states.length;
  }

  get latest() {
    return this.states.length ? this.states[this.states.length - 1].state : null;
  }

  push(state, arrivedAt = this.now()) {
    const last = this.states[this.states.length - 1];
    if (last !== undefined && arrivedAt < last.at) arrivedAt = last.at; // arrival times never go back
    this.states.push({ state, at: arrivedAt });
    if (this.states.length > this.maxStates) this.states.splice(0, this.states.length - this.maxStates);
  }

  clear() {
    this.states = [];
    this.shownTick = null;
  }

  /**
   * The view to draw at `renderTime` (same clock as the arrival times), or null before any state. It keeps the
   * older state's `tick`, which `shownTick` remembers: what a fire should name as `seen_tick` (lag compensation).
   */
  at(renderTime = this.now()) {
    const view = this.view(renderTime);
    if (view !== null && Number.isInteger(view.tick)) this.shownTick = view.tick;
    return view;
  }

  view(renderTime) {
    const states = this.states;
    if (states.length === 0) return null;
    const target = renderTime - this.delayMs;
    if (target <= states[0].at) return states[0].state;
    const newest = states[states.length - 1];
    if (target >= newest.at) return newest.state;
    let index = states.length - 1;
    while (states[index - 1].at > target) index -= 1;
    const older = states[index - 1];
    const newer = states[index];
    const span = newer.at - older.at;
    const alpha = span > 0 ? (target - older.at) / span : 1;
    return this.blend(older.state, newer.state, alpha);
  }

  /** `from` with the numeric fields of its list entries moved `alpha` of the way to those of `to`. */
  blend(from, to, alpha) {
    const view = { ...from };
    for (const [key, list] of Object.entries(from)) {
      const target = to[key];
      if (!Array.isArray(list) || !Array.isArray(target)) continue;
      const byKey = new Map();
      for (const entry of target) {
        const k = entryKey(entry);
        if (k !== undefined) byKey.set(k, entry);
      }
      view[key] = list.map((entry) => {
        const k = entryKey(entry);
        const next = k === undefined ? undefined : byKey.get(k);
        if (next === undefined) return entry;
        const moved = { ...entry };
        for (const field of this.fields) {
          const a = entry[field];
          const b = next[field];
          if (typeof a === "number" && typeof b === "number" && Number.isFinite(a) && Number.isFinite(b)) {
            moved[field] = a + (b - a) * alpha;
          }
        }
        return moved;
      });
    }
    return view;
  }
}

// -- prediction -------------------------------------------------------------------------------------------

/**
 * Client-side prediction: `stamp(message)` gives each input (or fire) the next `seq` and keeps it until a
 * state acknowledges it; `reconcile(state, you)` drops what the player's `seq` in the state acknowledges and
 * returns the inputs still unacknowledged, to re-apply on top of the server's position.
 */
export class InputPredictor {
  /** @param {{firstSeq?: number, maxPending?: number}} [options] */
  constructor(options = {}) {
    this.nextSeq = options.firstSeq ?? 1;
    this.maxPending = options.maxPending ?? 1024;
    this.acknowledged = this.nextSeq - 1;
    /** @type {object[]} unacknowledged messages, oldest first, each with its `seq` */
    this.pending = [];
  }

  /** `message` with the next `seq`, kept until acknowledged. */
  stamp(message) {
    const stamped = { ...message, seq: this.nextSeq };
    this.nextSeq += 1;
    this.pending.push(stamped);
    if (this.pending.length > this.maxPending) this.pending.shift();
    return stamped;
  }

  /** Drop the inputs up to `seq`; the ones still pending. */
  acknowledge(seq) {
    if (typeof seq === "number" && seq > this.acknowledged) this.acknowledged = seq;
    let drop = 0;
    while (drop < this.pending.length && this.pending[drop].seq <= this.acknowledged) drop += 1;
    if (drop) this.pending.splice(0, drop);
    return [...this.pending];
  }

  /** From a state: the inputs to apply again over `you`'s position in it (all pending if `you` is absent). */
  reconcile(state, you) {
    const players = Array.isArray(state?.players) ? state.players : [];
    const mine = players.find((player) => player && player.p === you);
    return this.acknowledge(mine?.seq);
  }

  reset() {
    this.pending = [];
  }
}
