// The library's pure parts: interpolation, prediction, close codes and errors. No server needed.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { readFileSync } from "node:fs";

import {
  CLOSE_CODES, Ext, InputPredictor, REFUSALS, StateBuffer, StateDecoder, TickroomClient, TickroomError, closeReason,
  decodeMsgpack, errorFromClose,
} from "../tickroom.js";

function arenaState(tick, players, projectiles = []) {
  return { type: "state", tick, t: tick * 15, players, projectiles };
}

describe("StateBuffer", () => {
  test("renders delayMs behind the newest state, interpolating x and y of the same player", () => {
    const buffer = new StateBuffer({ delayMs: 100 });
    buffer.push(arenaState(1, [{ p: 1, x: 0, y: 10, hp: 100 }]), 1000);
    buffer.push(arenaState(2, [{ p: 1, x: 100, y: 30, hp: 90 }]), 1100);
    const view = buffer.at(1150); // target 1050: halfway
    assert.equal(view.players[0].x, 50);
    assert.equal(view.players[0].y, 20);
    assert.equal(view.players[0].hp, 100, "discrete fields come from the older state until the newer is reached");
    assert.equal(view.tick, 1);
  });

  test("shownTick is the tick of the state the last view was drawn from: a fire's seen_tick", () => {
    const buffer = new StateBuffer({ delayMs: 100 });
    assert.equal(buffer.shownTick, null);
    buffer.push(arenaState(41, [{ p: 1, x: 0, y: 0 }]), 1000);
    buffer.push(arenaState(42, [{ p: 1, x: 10, y: 0 }]), 1015);
    buffer.push(arenaState(43, [{ p: 1, x: 20, y: 0 }]), 1030);
    buffer.at(1120); // target 1020: between 42 and 43, drawn from 42
    assert.equal(buffer.shownTick, 42);
    buffer.at(2000);
    assert.equal(buffer.shownTick, 43);
    buffer.clear();
    assert.equal(buffer.shownTick, null);
  });

  test("matches projectiles by id, not by their owner p", () => {
    const buffer = new StateBuffer({ delayMs: 0 });
    buffer.push(arenaState(1, [], [{ id: 7, p: 1, x: 0, y: 0 }, { id: 8, p: 1, x: 500, y: 500 }]), 0);
    buffer.push(arenaState(2, [], [{ id: 8, p: 1, x: 600, y: 500 }, { id: 7, p: 1, x: 10, y: 20 }]), 10);
    const view = buffer.at(5);
    assert.deepEqual(view.projectiles.map(({ id, x, y }) => [id, x, y]), [[7, 5, 10], [8, 550, 500]]);
  });

  test("an entry that is in only one of the two states is not moved, and a newcomer waits for its state", () => {
    const buffer = new StateBuffer({ delayMs: 0 });
    buffer.push(arenaState(1, [{ p: 1, x: 0, y: 0 }, { p: 2, x: 40, y: 40 }]), 0);
    buffer.push(arenaState(2, [{ p: 1, x: 10, y: 0 }, { p: 3, x: 1, y: 1 }]), 10);
    const view = buffer.at(5);
    assert.deepEqual(view.players, [{ p: 1, x: 5, y: 0 }, { p: 2, x: 40, y: 40 }]);
  });

  test("before the oldest state shows the oldest, after the newest shows the newest (no extrapolation)", () => {
    const buffer = new StateBuffer({ delayMs: 100 });
    assert.equal(buffer.at(0), null);
    const first = arenaState(1, [{ p: 1, x: 0, y: 0 }]);
    const second = arenaState(2, [{ p: 1, x: 10, y: 0 }]);
    buffer.push(first, 1000);
    buffer.push(second, 1015);
    assert.equal(buffer.at(1050), first);
    assert.equal(buffer.at(5000), second);
    assert.equal(buffer.latest, second);
  });

  test("keeps at most maxStates, oldest dropped first, and arrival times never go back", () => {
    const buffer = new StateBuffer({ delayMs: 0, maxStates: 3 });
    for (let tick = 1; tick <= 5; tick++) buffer.push(arenaState(tick, []), tick * 10);
    assert.equal(buffer.size, 3);
    assert.equal(buffer.at(0).tick, 3);
    buffer.push(arenaState(6, [{ p: 1, x: 1, y: 1 }]), 20);
    assert.equal(buffer.states.at(-1).at, 50);
  });

  test("uses its own clock when no time is given", () => {
    let now = 0;
    const buffer = new StateBuffer({ delayMs: 50, now: () => now });
    buffer.push(arenaState(1, [{ p: 1, x: 0, y: 0 }]));
    now = 100;
    buffer.push(arenaState(2, [{ p: 1, x: 100, y: 0 }]));
    now = 125; // target 75
    assert.equal(buffer.at().players[0].x, 75);
  });
});

describe("InputPredictor", () => {
  test("numbers inputs and fires with one seq counter", () => {
    const predictor = new InputPredictor();
    assert.deepEqual(predictor.stamp({ type: "input", dx: 1, dy: 0 }), { type: "input", dx: 1, dy: 0, seq: 1 });
    assert.equal(predictor.stamp({ type: "fire", angle: 0 }).seq, 2);
    assert.equal(predictor.pending.length, 2);
  });

  test("a state acknowledging seq n drops inputs up to n and returns the rest to re-apply", () => {
    const predictor = new InputPredictor();
    for (let i = 0; i < 5; i++) predictor.stamp({ type: "input", dx: 0, dy: 1 });
    const state = arenaState(9, [{ p: 1, seq: 99 }, { p: 2, seq: 3, x: 0, y: 0 }]);
    const replay = predictor.reconcile(state, 2);
    assert.deepEqual(replay.map((input) => input.seq), [4, 5]);
    assert.deepEqual(predictor.pending.map((input) => input.seq), [4, 5]);
    assert.equal(predictor.acknowledged, 3);
  });

  test("an older acknowledgement (a late state) changes nothing", () => {
    const predictor = new InputPredictor();
    for (let i = 0; i < 4; i++) predictor.stamp({ type: "input", dx: 0, dy: 0 });
    predictor.acknowledge(3);
    assert.deepEqual(predictor.acknowledge(1).map((input) => input.seq), [4]);
    assert.equal(predictor.acknowledged, 3);
  });

  test("a state without the player keeps everything pending", () => {
    const predictor = new InputPredictor({ firstSeq: 10 });
    predictor.stamp({ type: "input", dx: 0, dy: 0 });
    assert.deepEqual(predictor.reconcile(arenaState(1, [{ p: 1, seq: 50 }]), 2).map((input) => input.seq), [10]);
  });

  test("keeps at most maxPending inputs", () => {
    const predictor = new InputPredictor({ maxPending: 2 });
    for (let i = 0; i < 5; i++) predictor.stamp({ type: "input", dx: 0, dy: 0 });
    assert.deepEqual(predictor.pending.map((input) => input.seq), [4, 5]);
  });
});

describe("close codes and errors", () => {
  test("every documented close code has a reason, and each refusal status has its 4xxx code", () => {
    for (const code of [1000, 1001, 1006, 1008, 1009, 1011, 4400, 4401, 4403, 4404, 4421, 4503]) {
      assert.ok(CLOSE_CODES[code], `close code ${code} has no reason`);
      assert.equal(closeReason(code), CLOSE_CODES[code]);
    }
    for (const [code, status] of Object.entries(REFUSALS)) {
      assert.match(CLOSE_CODES[4000 + status], new RegExp(code), `${code} is not named under ${4000 + status}`);
    }
    assert.match(closeReason(4429), /429/);
  });

  test("a 4xxx close becomes a TickroomError whose code is the close reason", () => {
    const error = errorFromClose(4401, "token_invalid", { code: "token_invalid", message: "bad signature" });
    assert.ok(error instanceof TickroomError);
    assert.equal(error.code, "token_invalid");
    assert.equal(error.message, "bad signature");
    assert.equal(error.closeCode, 4401);
    assert.equal(error.status, 401);
    assert.equal(errorFromClose(4421, "wrong_node").status, 421);
    assert.equal(errorFromClose(1000, ""), null);
    assert.equal(errorFromClose(1006, ""), null);
  });

  test("a client without any WebSocket says how to get one", () => {
    const saved = globalThis.WebSocket;
    try {
      delete globalThis.WebSocket;
      assert.throws(() => new TickroomClient({ url: "ws://127.0.0.1:1", token: "t" }), /options\.WebSocket/);
    } finally {
      if (saved !== undefined) globalThis.WebSocket = saved;
    }
  });
});

describe("the delta encoding", () => {
  // Frames the server encodes and the JSON states they stand for (tests/test_wire.py keeps the file current).
  const fixture = JSON.parse(readFileSync(new URL("./delta-fixture.json", import.meta.url), "utf8"));
  const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (pair) => parseInt(pair, 16));

  test("keyframes and deltas decode to the same states as JSON: an arena stretch and every shape", () => {
    assert.ok(fixture.cases.length > 20);
    for (const [index, { frames, states }] of fixture.cases.entries()) {
      const decoder = new StateDecoder();
      frames.forEach((frame, at) => {
        const data = bytes(frame);
        // As an ArrayBuffer (a WebSocket's binaryType "arraybuffer") for half of them, a Uint8Array for the rest.
        const state = decoder.decode(at % 2 ? data.buffer : data);
        assert.deepStrictEqual(state, states[at], `case ${index}, frame ${at}`);
      });
    }
  });

  test("the arena stretch is smaller as deltas than as JSON by four times or more", () => {
    const { frames, states } = fixture.cases[0];
    const deltaBytes = frames.slice(1).reduce((sum, frame) => sum + frame.length / 2, 0);
    const jsonBytes = states.slice(1).reduce((sum, state) => sum + JSON.stringify(state).length, 0);
    assert.ok(deltaBytes * 4 < jsonBytes, `${deltaBytes} bytes of deltas for ${jsonBytes} of JSON`);
  });

  test("a delta before any keyframe is refused", () => {
    assert.throws(() => new StateDecoder().decode(bytes(fixture.cases[0].frames[1])), /before any keyframe/);
  });

  test("integers move numbers by tenths, floats replace them, and a field past the object's end is refused", () => {
    const decoder = new StateDecoder();
    // {"type": "state", "tick": 1, "t": 0, "a": 0.5, "b": 7}
    decoder.decode(bytes("85a474797065a57374617465a47469636b01a17400a161cb3fe0000000000000a16207"));
    // [1, 15, {3: 3, 4: 1.25}]: a = 0.5 + 3 tenths, b = 1.25
    assert.deepStrictEqual(decoder.decode(bytes("93010f820303" + "04cb3ff4000000000000")),
      { type: "state", tick: 2, t: 15, a: 0.8, b: 1.25 });
    // [1, 15, {9: 1}]: the object has 5 fields
    assert.throws(() => decoder.decode(bytes("93010f810901")), /field 9 of an object with 5 fields/);
  });

  test("decodeMsgpack reads every MessagePack type a state may hold", () => {
    const cases = [
      ["c0", null], ["c2", false], ["c3", true], ["7f", 127], ["ff", -1], ["e0", -32], ["cc80", 128],
      ["cd0100", 256], ["ce00010000", 65536], ["cf0000000100000000", 2 ** 32], ["d080", -128], ["d1ff00", -256],
      ["d2ffff0000", -65536], ["d3ffffffff00000000", -(2 ** 32)], ["ca3fc00000", 1.5],
      ["cb3ff8000000000000", 1.5], ["a3616263", "abc"], ["d903e282ac", "\u20ac"], ["da0001" + "61", "a"],
      ["92c001", [null, 1]], ["dc000101", [1]], ["81a17801", { x: 1 }], ["de0001a17801", { x: 1 }],
      ["c403010203", new Uint8Array([1, 2, 3])],
    ];
    for (const [hex, expected] of cases) assert.deepStrictEqual(decodeMsgpack(bytes(hex)), expected, hex);
    const ext = decodeMsgpack(bytes("d401fd"));
    assert.ok(ext instanceof Ext);
    assert.equal(ext.type, 1);
    assert.deepStrictEqual([...ext.data], [0xfd]);
    assert.throws(() => decodeMsgpack(bytes("cd01")), /cut short/);
    assert.throws(() => decodeMsgpack(bytes("c1")), /starts no MessagePack value/);
    assert.throws(() => decodeMsgpack(bytes("0101")), /bytes left/);
  });

  test("a client asks for json (the default) or delta, nothing else", () => {
    const WebSocket = class {};
    assert.equal(new TickroomClient({ url: "ws://x", token: "t", WebSocket }).encoding, "json");
    assert.equal(new TickroomClient({ url: "ws://x", token: "t", WebSocket, encoding: "delta" }).encoding, "delta");
    assert.throws(() => new TickroomClient({ url: "ws://x", token: "t", WebSocket, encoding: "msgpack" }), TypeError);
  });
});
