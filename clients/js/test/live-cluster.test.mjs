// Against a real deployment of two nodes on one Redis and one Postgres, what one node alone cannot show: a
// spectator on the node hosting a room, a drained node's players coming back by themselves on the other node,
// and players giving up once the reconnect grace ran out with every node killed. Needs TICKROOM_LOBBY_URL (the
// node the clients know; the lobby must place new rooms on the other one), TICKROOM_JWT_SECRET,
// TICKROOM_ADMIN_TOKEN (for `/admin/drain`) and TICKROOM_NODE_PIDS (every node's process, killed by the last
// test). tests/test_js_client.py starts such a deployment and runs this file. The tests build on each other and
// run in order: one arena match is watched, moved by the drain, watched to its end; the last test kills the nodes.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { TickroomClient, TickroomError } from "../tickroom.js";
import { TICKROOM_JWT_SECRET, WebSocketImpl, mintToken, waitFor, within } from "../testing/helpers.mjs";

const LOBBY_URL = process.env.TICKROOM_LOBBY_URL ?? "";
const ADMIN_TOKEN = process.env.TICKROOM_ADMIN_TOKEN ?? "";
const NODE_PIDS = (process.env.TICKROOM_NODE_PIDS ?? "").split(",").filter(Boolean).map(Number);
const GIVE_UP_GRACE_MS = 3000;

const skip = !LOBBY_URL || !TICKROOM_JWT_SECRET || !ADMIN_TOKEN || NODE_PIDS.length === 0
  ? "TICKROOM_LOBBY_URL, TICKROOM_JWT_SECRET, TICKROOM_ADMIN_TOKEN and TICKROOM_NODE_PIDS are not set" : false;

function newClient(options = {}) {
  return new TickroomClient({ url: LOBBY_URL, token: mintToken(), WebSocket: WebSocketImpl, ...options });
}

/** The base URL (`ws://HOST:PORT`) of the node a `match_found` sends the player to. */
function nodeBase(matchFound) {
  const url = new URL(matchFound.url);
  return `${url.protocol}//${url.host}`;
}

/** The operator's drain call, on the node itself (docs/operations.md): its answer's status and body. */
async function drain(matchFound, deadlineS) {
  const base = nodeBase(matchFound).replace(/^ws/, "http");
  const response = await within(fetch(`${base}/admin/drain?node=${encodeURIComponent(matchFound.node)}` +
    `&deadline_s=${deadlineS}`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } }), 5000, "the drain call");
  return { status: response.status, body: await response.json() };
}

async function joinArena(count, options = {}) {
  const matches = await within(Promise.all(Array.from({ length: count }, () => newClient(options).join("arena"))),
    20000, `${count} players joining the arena`);
  for (const match of matches) open.add(match);
  return matches;
}

const open = new Set();

after(async () => {
  await Promise.allSettled([...open].map((match) => within(match.leave(), 5000, "leaving")));
});

describe("a deployment of two nodes", { skip, concurrency: 1 }, () => {
  /** The arena match the first four tests follow, its room, and the node the lobby placed it on. */
  let players = [];
  let room = null;
  let firstHost = null;
  let firstWatcher = null;

  test("players queued in one node's lobby play on the node it placed their room on", async () => {
    players = await joinArena(3);
    room = players[0].room;
    firstHost = players[0].matchFound.node;
    assert.equal(new Set(players.map((match) => match.room)).size, 1, "all three in one room");
    assert.deepEqual(players.map((match) => match.you).sort(), [1, 2, 3]);
    assert.notEqual(nodeBase(players[0].matchFound), LOBBY_URL,
      "the room must be on the node the clients do not know, for them to come back through their lobby when it drains");
    await waitFor(() => players.every((match) => match.state !== null), 5000, "a first state each");
  });

  test("a spectator watches the running room on its node: you null, its states, and read_only for a game message",
    async () => {
      const watcher = newClient();
      await assert.rejects(within(watcher.spectate(room), 5000, "the lobby node's refusal"), (error) => {
        assert.ok(error instanceof TickroomError);
        assert.equal(error.code, "room_not_found", "the node the clients know does not host the room");
        assert.equal(error.closeCode, 4404);
        return true;
      });
      const spectator = await within(watcher.spectate(room, { url: nodeBase(players[0].matchFound) }), 5000,
        "spectating");
      open.add(spectator);
      firstWatcher = spectator;
      assert.equal(spectator.you, null);
      assert.equal(spectator.welcome.spectator, true);
      assert.equal(spectator.room, room);
      assert.equal(spectator.mode, "arena");
      assert.equal(spectator.connected, true);
      const errors = [];
      let states = 0;
      spectator.onError = (error) => errors.push(error);
      spectator.onState = () => {
        states += 1;
      };
      await waitFor(() => states >= 10, 5000, "10 states for the spectator");
      assert.deepEqual(spectator.state.players.map((player) => player.p).sort(), [1, 2, 3], "no seat of its own");

      // What a player does shows in what the spectator gets.
      const mover = players[0];
      assert.ok(mover.send({ type: "input", seq: 1, dx: 1, dy: 0 }));
      await waitFor(() => spectator.state.players.find((player) => player.p === mover.you)?.seq >= 1, 5000,
        "the player's input in the spectator's state");

      // A spectator's game message is refused with read_only; the connection goes on.
      assert.ok(spectator.send({ type: "input", seq: 1, dx: -1, dy: 0 }), "sent: the node is the one to refuse");
      await waitFor(() => errors.length > 0, 5000, "the refusal");
      assert.equal(errors.length, 1);
      assert.ok(errors[0] instanceof TickroomError);
      assert.equal(errors[0].code, "read_only");
      assert.equal(errors[0].fatal, false);
      const seen = states;
      await waitFor(() => states >= seen + 5, 5000, "states after the refusal");
      assert.equal(spectator.connected, true);
      assert.ok((await spectator.ping()) >= 0);
    });

  test("a drained node's players get reconnect and come back by themselves into the same match on the other node",
    async () => {
      const before = players.map((match) => ({ you: match.you, id: match.id }));
      const seen = players.map(() => []);
      const statesAfter = players.map(() => 0);
      players.forEach((match, index) => {
        match.onReconnecting = (info) => seen[index].push(["reconnecting", info.reason, info.code]);
        match.onReconnected = (info) => seen[index].push(["reconnected", info.welcome.you]);
        match.onState = () => {
          if (seen[index].length === 2) statesAfter[index] += 1;
        };
      });
      const { status, body } = await drain(players[0].matchFound, 1);
      assert.equal(status, 200, JSON.stringify(body));
      assert.equal(body.state, "draining");

      // Spectators are not brought back: the one on the drained node ends with the node's close.
      const watched = await within(firstWatcher.finished, 15000, "the spectator's end");
      assert.equal(watched.reason, "error");
      assert.equal(watched.error.code, "connection_lost");
      assert.equal(watched.error.closeCode, 1001);
      open.delete(firstWatcher);

      await waitFor(() => seen.every((events) => events.length === 2), 25000, "reconnecting, then reconnected");
      players.forEach((match, index) => {
        assert.deepEqual(seen[index], [["reconnecting", "reconnect", 1001], ["reconnected", before[index].you]]);
        assert.equal(match.you, before[index].you);
        assert.equal(match.id, before[index].id);
        assert.equal(match.room, room);
        assert.equal(match.connected, true);
        assert.notEqual(match.matchFound.node, firstHost, "back on the other node");
        assert.equal(nodeBase(match.matchFound), LOBBY_URL);
      });
      await waitFor(() => statesAfter.every((count) => count >= 5), 5000, "states after coming back");
      // The restored match still takes their inputs.
      assert.ok(players[1].send({ type: "input", seq: 1, dx: 0, dy: 1 }));
      await waitFor(() => players[1].state.players.find((player) => player.p === players[1].you)?.seq >= 1, 5000,
        "the input acknowledged on the new node");
    });

  test("a spectator of the match on its new node watches it to its end", async () => {
    const spectator = await within(newClient().spectate(room, { url: nodeBase(players[0].matchFound) }), 5000,
      "spectating");
    open.add(spectator);
    assert.equal(spectator.you, null);
    const ends = [];
    spectator.onEnd = (end) => ends.push(end);
    await waitFor(() => spectator.state !== null && spectator.state.type === "state", 5000, "a state");
    const [winner, ...leavers] = players;
    await within(Promise.all(leavers.map((match) => match.leave())), 10000, "two players leaving");
    for (const match of leavers) open.delete(match);
    const watched = await within(spectator.finished, 15000, "the spectator's end");
    assert.equal(watched.reason, "ended");
    open.delete(spectator);
    assert.equal(ends.length, 1);
    assert.equal(ends[0].reason, "last_player");
    assert.equal(ends[0].ranking.find((line) => line.rank === 1).id, winner.id);
    assert.deepEqual(spectator.result, ends[0]);
    const played = await within(winner.finished, 15000, "the winner's end");
    assert.equal(played.reason, "ended");
    assert.equal(winner.result.match, ends[0].match);
    open.delete(winner);
  });

  test("players whose nodes are all killed retry through the lobby, give up once the grace ran out; a new join fails",
    async () => {
      const opened = [];
      function CountingWebSocket(url) {
        opened.push({ path: new URL(url).pathname, at: Date.now() });
        return new WebSocketImpl(url);
      }
      const matches = await joinArena(3, { reconnectGraceMs: GIVE_UP_GRACE_MS, WebSocket: CountingWebSocket });
      await waitFor(() => matches.every((match) => match.state !== null), 5000, "a first state each");
      const seen = matches.map(() => []);
      matches.forEach((match, index) => {
        match.onReconnecting = (info) => seen[index].push(["reconnecting", info.reason, info.graceMs]);
        match.onReconnected = () => seen[index].push(["reconnected"]);
        match.onError = (error) => seen[index].push(["error", error.code, error.fatal]);
      });

      const killedAt = Date.now();
      for (const pid of NODE_PIDS) process.kill(pid, "SIGKILL");
      const outcomes = await within(Promise.all(matches.map((match) => match.finished)), GIVE_UP_GRACE_MS + 5000,
        "giving up");
      const tookMs = Date.now() - killedAt;
      for (const [index, outcome] of outcomes.entries()) {
        assert.equal(outcome.reason, "error");
        assert.ok(outcome.error instanceof TickroomError);
        assert.equal(outcome.error.code, "reconnect_failed");
        assert.equal(outcome.error.fatal, true);
        assert.deepEqual(seen[index], [["reconnecting", "drop", GIVE_UP_GRACE_MS], ["error", "reconnect_failed", true]]);
        assert.equal(matches[index].connected, false);
        assert.equal(matches[index].reconnecting, false);
        assert.equal(matches[index].send({ type: "input", seq: 1, dx: 1, dy: 0 }), false);
        open.delete(matches[index]);
      }
      // Not before the grace's last wait, not long after it.
      assert.ok(tookMs >= GIVE_UP_GRACE_MS / 2 && tookMs <= GIVE_UP_GRACE_MS + 2000, `gave up after ${tookMs} ms`);
      // Each player really tried the dead lobby again (after 0.2 s, 0.5 s, 1 s... with jitter), never the game.
      const retries = opened.filter((attempt) => attempt.at >= killedAt);
      assert.ok(retries.every((attempt) => attempt.path === "/lobby"), JSON.stringify(retries));
      assert.ok(retries.length >= 2 * matches.length, `${retries.length} lobby attempts in all`);
      // A new player cannot reach the lobby at all: refused at once, not held up.
      await assert.rejects(within(newClient().join("arena"), 5000, "joining a dead node"),
        (error) => error instanceof TickroomError && error.code === "connect_failed" && error.closeCode === 1006);
    });
});
