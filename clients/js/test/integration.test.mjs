// Against a real node: TICKROOM_URL (ws://HOST:PORT, a node with a lobby) and TICKROOM_JWT_SECRET.
// tests/test_js_client.py starts one and runs these. The tests of this file run one after another, so that
// their players never share a lobby room.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { TickroomClient, TickroomError } from "../tickroom.js";
import { TICKROOM_JWT_SECRET, TICKROOM_URL, WebSocketImpl, mintToken, waitFor, within } from "../testing/helpers.mjs";

const skip = !TICKROOM_URL || !TICKROOM_JWT_SECRET ? "TICKROOM_URL and TICKROOM_JWT_SECRET are not set" : false;

function newClient(options = {}) {
  return new TickroomClient({ url: TICKROOM_URL, token: mintToken(options), WebSocket: WebSocketImpl,
    encoding: options.encoding });
}

const open = new Set();

async function joinAll(mode, count) {
  const matches = await within(Promise.all(Array.from({ length: count }, () => newClient().join(mode))),
    20000, `${count} players joining ${mode}`);
  for (const match of matches) open.add(match);
  return matches;
}

async function leaveAll(matches) {
  await within(Promise.all(matches.map((match) => match.leave())), 10000, "leaving");
  for (const match of matches) open.delete(match);
}

after(async () => {
  await Promise.allSettled([...open].map((match) => match.leave()));
});

describe("a Tickroom node", { skip, concurrency: 1 }, () => {
  test("three players join the arena through the lobby and get its states", async () => {
    const lobbyStatuses = [];
    const clients = [newClient(), newClient(), newClient()];
    const matches = await within(Promise.all(clients.map((client) => client.join("arena", {
      onLobby: (lobby) => lobbyStatuses.push(lobby.status),
    }))), 20000, "joining");
    for (const match of matches) open.add(match);
    assert.equal(new Set(matches.map((match) => match.room)).size, 1, "all three in one room");
    assert.deepEqual(matches.map((match) => match.you).sort(), [1, 2, 3]);
    for (const match of matches) {
      assert.equal(match.mode, "arena");
      assert.equal(match.welcome.type, "welcome");
      assert.equal(match.connected, true);
    }
    assert.ok(lobbyStatuses.length > 0, "the lobby told where the players wait");
    const counts = matches.map(() => 0);
    matches.forEach((match, index) => {
      match.onState = (state) => {
        assert.equal(state.type, "state");
        counts[index] += 1;
      };
    });
    await waitFor(() => counts.every((count) => count >= 20), 10000, "20 states each");
    const mine = matches[0].state.players.find((player) => player.p === matches[0].you);
    assert.equal(typeof mine.x, "number");
    assert.ok(matches[0].send({ type: "input", seq: 1, dx: 1, dy: 0 }));
    await waitFor(() => matches[0].state.players.find((player) => player.p === matches[0].you).seq >= 1, 5000,
      "the input acknowledged");
    assert.ok((await matches[0].ping()) >= 0);
    await leaveAll(matches);
    for (const match of matches) assert.equal((await match.finished).reason, "left");
  });

  test("a player whose connection dies mid-match comes back into the same seat by itself", async () => {
    const matches = await joinAll("arena", 3);
    const [dropped] = matches;
    const you = dropped.you;
    const room = dropped.room;
    const seen = [];
    dropped.onReconnecting = (info) => seen.push(["reconnecting", info.reason]);
    dropped.onReconnected = (info) => seen.push(["reconnected", info.welcome.you]);
    let statesAfter = 0;
    dropped.onState = () => {
      if (seen.length === 2) statesAfter += 1;
    };
    await waitFor(() => dropped.state !== null, 5000, "a first state");
    const socket = dropped.socket;
    if (typeof socket.terminate === "function") socket.terminate(); // the TCP connection dies
    else socket.close(); // Node's own WebSocket: a close we did not ask the match for
    await waitFor(() => seen.length === 2, 15000, "reconnecting, then reconnected");
    assert.deepEqual(seen, [["reconnecting", "drop"], ["reconnected", you]]);
    assert.equal(dropped.you, you);
    assert.equal(dropped.room, room);
    assert.equal(dropped.connected, true);
    await waitFor(() => statesAfter >= 5, 5000, "states after coming back");
    await leaveAll(matches);
  });

  test("delta clients get the same states as a JSON client, also after a dropped connection comes back", async () => {
    const clients = [newClient(), newClient({ encoding: "delta" }), newClient({ encoding: "delta" })];
    const matches = await within(Promise.all(clients.map((client) => client.join("arena"))), 20000, "joining");
    for (const match of matches) open.add(match);
    const seen = matches.map(() => new Map());
    matches.forEach((match, index) => {
      match.onState = (state) => seen[index].set(state.tick, state);
    });
    const [plain, packed, dropped] = matches;
    plain.send({ type: "input", seq: 1, dx: 1, dy: 0 });
    packed.send({ type: "input", seq: 1, dx: -1, dy: 0.5 });
    packed.send({ type: "fire", seq: 2, angle: 1 });
    await waitFor(() => seen.every((states) => states.size >= 40), 10000, "40 states each");
    const compare = (index) => {
      let common = 0;
      for (const [tick, state] of seen[index]) {
        const json = seen[0].get(tick);
        if (json === undefined) continue;
        assert.deepStrictEqual(state, json, `tick ${tick}`);
        common += 1;
      }
      return common;
    };
    assert.ok(compare(1) >= 20 && compare(2) >= 20, "states of the same ticks compared");
    let reconnected = false;
    dropped.onReconnected = () => {
      reconnected = true;
      seen[2].clear(); // from here on: the states of the new connection, from its keyframe on
    };
    const socket = dropped.socket;
    if (typeof socket.terminate === "function") socket.terminate();
    else socket.close();
    await waitFor(() => reconnected && seen[2].size >= 20, 15000, "reconnected and 20 states");
    await waitFor(() => [...seen[2].keys()].filter((tick) => seen[0].has(tick)).length >= 10, 5000, "common ticks");
    assert.ok(compare(2) >= 10);
    await leaveAll(matches);
  });

  test("a refused token rejects with its protocol code", async () => {
    const forged = new TickroomClient({ url: TICKROOM_URL, WebSocket: WebSocketImpl,
      token: mintToken({ secret: "not-the-node-secret" }) });
    await assert.rejects(within(forged.join("arena"), 5000, "the refusal"), (error) => {
      assert.ok(error instanceof TickroomError);
      assert.equal(error.code, "token_invalid");
      assert.equal(error.closeCode, 4401);
      return true;
    });
    const expired = new TickroomClient({ url: TICKROOM_URL, WebSocket: WebSocketImpl, token: mintToken({ ttlS: -60 }) });
    await assert.rejects(within(expired.join("arena"), 5000, "the refusal"),
      (error) => error instanceof TickroomError && error.code === "token_expired");
  });

  test("an unknown mode is refused by the lobby", async () => {
    await assert.rejects(within(newClient().join("no-such-game"), 5000, "the refusal"),
      (error) => error instanceof TickroomError && error.code === "unknown_mode");
  });

  test("a dice match is played to its end by rolling when your pid is in to_roll", async () => {
    const matches = await joinAll("dice", 2);
    const errors = [];
    const ends = matches.map((match) => {
      const rolled = new Set();
      const roll = (state) => {
        const throwId = `${state.round}/${state.rolloff}`;
        if (Array.isArray(state.to_roll) && state.to_roll.includes(match.you) && !rolled.has(throwId)) {
          rolled.add(throwId);
          match.send({ type: "roll" });
        }
      };
      match.onError = (error) => errors.push(error.code);
      match.onState = roll;
      return new Promise((resolve) => {
        match.onEnd = resolve;
      });
    });
    const results = await within(Promise.all(ends), 30000, "both match_end");
    assert.deepEqual(errors, []);
    for (const result of results) {
      assert.equal(result.type, "match_end");
      assert.equal(result.reason, "winner");
      assert.deepEqual(result.ranking.map((line) => line.rank).sort(), [1, 2]);
    }
    for (const match of matches) {
      assert.equal((await within(match.finished, 15000, "the close after match_end")).reason, "ended");
      open.delete(match);
    }
  });
});
