// Test helpers: player tokens (HS256, node:crypto), and a WebSocket client for Node 20 runs without
// --experimental-websocket (the WHATWG interface the library uses, over an http upgrade).

import { createHmac, randomBytes, randomUUID, createHash } from "node:crypto";
import http from "node:http";

export const TICKROOM_URL = process.env.TICKROOM_URL ?? "";
export const TICKROOM_JWT_SECRET = process.env.TICKROOM_JWT_SECRET ?? "";

/** A player token as `tickroom token` mints it: claims sub (a UUID), name, iat, exp. */
export function mintToken({ name = `js-${randomUUID().slice(0, 8)}`, sub = randomUUID(), ttlS = 600,
  secret = TICKROOM_JWT_SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ sub, name, iat: now, exp: now + ttlS })}`;
  const signature = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${signature}`;
}

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

function event(type, fields = {}) {
  return Object.assign(new Event(type), fields);
}

/** A small client WebSocket (RFC 6455, text and binary frames, no extensions) with the WHATWG shape. */
export class MinimalWebSocket extends EventTarget {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(url) {
    super();
    this.url = url;
    this.readyState = MinimalWebSocket.CONNECTING;
    this._buffer = Buffer.alloc(0);
    this._fragments = [];
    this._closeFrame = null;
    const target = new URL(url);
    const key = randomBytes(16).toString("base64");
    const request = http.request({
      host: target.hostname, port: target.port || 80, path: `${target.pathname}${target.search}`,
      headers: { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13" },
    });
    request.on("upgrade", (response, socket, head) => {
      const accept = createHash("sha1").update(key + GUID).digest("base64");
      if (response.headers["sec-websocket-accept"] !== accept) {
        socket.destroy();
        this._fail();
        return;
      }
      this._socket = socket;
      socket.setNoDelay(true);
      this.readyState = MinimalWebSocket.OPEN;
      socket.on("data", (chunk) => this._receive(chunk));
      socket.on("close", () => this._finish());
      socket.on("error", () => {});
      this.dispatchEvent(event("open"));
      if (head.length) this._receive(head);
    });
    request.on("response", (response) => {
      response.resume(); // an HTTP refusal: a browser sees only an error and 1006
      this._fail();
    });
    request.on("error", () => this._fail());
    request.end();
  }

  _fail() {
    if (this.readyState === MinimalWebSocket.CLOSED) return;
    this.readyState = MinimalWebSocket.CLOSED;
    this.dispatchEvent(event("error"));
    this.dispatchEvent(event("close", { code: 1006, reason: "", wasClean: false }));
  }

  _finish() {
    if (this.readyState === MinimalWebSocket.CLOSED) return;
    this.readyState = MinimalWebSocket.CLOSED;
    const frame = this._closeFrame;
    this.dispatchEvent(event("close", frame ? { ...frame, wasClean: true } : { code: 1006, reason: "", wasClean: false }));
  }

  _receive(chunk) {
    this._buffer = Buffer.concat([this._buffer, chunk]);
    for (;;) {
      const buffer = this._buffer;
      if (buffer.length < 2) return;
      const fin = (buffer[0] & 0x80) !== 0;
      const opcode = buffer[0] & 0x0f;
      let length = buffer[1] & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) return;
        length = buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buffer.length < 10) return;
        length = Number(buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (buffer.length < offset + length) return;
      const payload = buffer.subarray(offset, offset + length);
      this._buffer = buffer.subarray(offset + length);
      this._frame(fin, opcode, Buffer.from(payload));
    }
  }

  _frame(fin, opcode, payload) {
    if (opcode === 0x1 || opcode === 0x2 || opcode === 0x0) {
      if (opcode !== 0x0) this._binary = opcode === 0x2;
      this._fragments.push(payload);
      if (!fin) return;
      const whole = Buffer.concat(this._fragments);
      // Binary frames arrive as an ArrayBuffer, as with `binaryType = "arraybuffer"`.
      const data = this._binary ? whole.buffer.slice(whole.byteOffset, whole.byteOffset + whole.length)
        : whole.toString("utf8");
      this._fragments = [];
      if (this.readyState === MinimalWebSocket.OPEN) this.dispatchEvent(event("message", { data }));
    } else if (opcode === 0x9) {
      this._write(0xa, payload);
    } else if (opcode === 0x8) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this._closeFrame = { code, reason: payload.subarray(2).toString("utf8") };
      if (this.readyState === MinimalWebSocket.OPEN) this._write(0x8, payload.subarray(0, 2));
      this.readyState = MinimalWebSocket.CLOSING;
      this._socket.end();
    }
  }

  _write(opcode, payload) {
    if (!this._socket || this._socket.destroyed) return;
    const mask = randomBytes(4);
    const length = payload.length;
    const head = length < 126 ? Buffer.from([0x80 | opcode, 0x80 | length])
      : Buffer.from([0x80 | opcode, 0x80 | 126, length >> 8, length & 0xff]);
    const masked = Buffer.alloc(length);
    for (let i = 0; i < length; i++) masked[i] = payload[i] ^ mask[i % 4];
    this._socket.write(Buffer.concat([head, mask, masked]));
  }

  send(text) {
    if (this.readyState !== MinimalWebSocket.OPEN) throw new Error("not open");
    this._write(0x1, Buffer.from(text, "utf8"));
  }

  close(code = 1000, reason = "") {
    if (this.readyState === MinimalWebSocket.CONNECTING) {
      this._fail();
      return;
    }
    if (this.readyState !== MinimalWebSocket.OPEN) return;
    this.readyState = MinimalWebSocket.CLOSING;
    const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
    payload.writeUInt16BE(code, 0);
    payload.write(reason, 2);
    this._write(0x8, payload);
    setTimeout(() => this._socket?.destroy(), 2000).unref();
  }

  /** Drop the TCP connection without a closing handshake (a lost network). */
  terminate() {
    this._socket?.destroy();
  }
}

/** The WebSocket the tests use: Node's own when present (--experimental-websocket, Node 22), else ours. */
export const WebSocketImpl = globalThis.WebSocket ?? MinimalWebSocket;

/** Resolves when `condition()` is true; fails after `timeoutMs`. */
export async function waitFor(condition, timeoutMs = 10000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** `promise`, or a failure after `timeoutMs`. */
export function within(promise, timeoutMs, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
