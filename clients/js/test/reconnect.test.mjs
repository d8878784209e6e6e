// The reconnect schedule against a scripted server (a fake WebSocket): what a real node rarely does on cue,
// a `reconnect` before a shutdown, `recovering`, `seat_lost`, a match that never comes back.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { TickroomClient, TickroomError } from "../tickroom.js";
import { waitFor } from "../testing/helpers.mjs";

/** A WebSocket whose server side is `server(socket)`, a script reacting to what the client sends. */
function scriptedWebSocket(server) {
  const sockets = [];
  class ScriptedSocket extends EventTarget {
    constructor(url) {
      super();
      this.url = new URL(url);
      this.readyState = 0;
      this.sent = [];
      sockets.push(this);
      setTimeout(() => server(this), 0);
    }

    accept() {
      setTimeout(() => {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        this.dispatchEvent(new Event("open"));
      }, 0);
    }

    push(message) {
      setTimeout(() => {
        if (this.readyState === 1) this.dispatchEvent(Object.assign(new Event("message"), { data: JSON.stringify(message) }));
      }, 0);
    }

    drop(code = 1006, reason = "") {
      setTimeout(() => {
        if (this.readyState === 3) return;
        this.readyState = 3;
        this.dispatchEvent(Object.assign(new Event("close"), { code, reason }));
      }, 0);
    }

    send(text) {
      const message = JSON.parse(text);
      this.sent.push(message);
      this.onClientMessage?.(message);
    }

    close(code = 1000, reason = "") {
      this.drop(code, reason);
    }
  }
  return { WebSocket: ScriptedSocket, sockets };
}

const ROOM = "room-1";

function matchFound(socket, ticket = "ticket-2", room = ROOM) {
  socket.push({ type: "match_found", room, mode: "arena", node: "n", url: `ws://fake/game?room=${room}&ticket=${ticket}`,
    ticket, players: [] });
  socket.drop(1000);
}

function welcome(socket, you = 2) {
  socket.push({ type: "welcome", v: 1, room: ROOM, mode: "arena", you, id: "id", state: "running", tick_ms: 15,
    countdown_ms: null, players: [] });
}

describe("reconnecting", () => {
  test("after `reconnect` it waits retry_ms, waits through `recovering` and `seat_lost`, and comes back with the ticket", async () => {
    let lobbyVisits = 0;
    const { WebSocket, sockets } = scriptedWebSocket((socket) => {
      socket.accept();
      if (socket.url.pathname === "/lobby") {
        lobbyVisits += 1;
        socket.onClientMessage = (message) => {
          if (lobbyVisits === 1) {
            matchFound(socket, "ticket-1");
          } else if (socket.sent.length === 1) {
            socket.push({ type: "lobby", status: "recovering", mode: "arena", room: ROOM, players: [] });
            socket.push({ type: "error", code: "seat_lost", message: "the node died" });
          } else {
            assert.equal(message.ticket, "ticket-1");
            matchFound(socket, "ticket-2");
          }
        };
      } else {
        socket.onClientMessage = (message) => {
          if (message.type === "hello") welcome(socket);
        };
      }
    });
    const client = new TickroomClient({ url: "ws://fake", token: "token", WebSocket, random: () => 0.5 });
    const match = await client.join("arena");
    assert.equal(sockets[1].url.searchParams.get("refusal"), "close");
    assert.equal(sockets[1].url.searchParams.get("token"), "token");
    const seen = [];
    match.onReconnecting = (info) => seen.push(["reconnecting", info.reason, Date.now()]);
    match.onReconnected = (info) => seen.push(["reconnected", info.welcome.you, Date.now()]);
    sockets[1].push({ type: "reconnect", reason: "shutdown", retry_ms: 300 });
    sockets[1].drop(1001);
    await waitFor(() => seen.length === 2, 5000, "reconnected");
    assert.deepEqual(seen.map(([kind, detail]) => [kind, detail]), [["reconnecting", "reconnect"], ["reconnected", 2]]);
    assert.ok(seen[1][2] - seen[0][2] >= 290, "waited retry_ms before the lobby");
    assert.deepEqual(sockets[2].sent.map((message) => [message.type, message.ticket]),
      [["join", "ticket-1"], ["join", "ticket-1"]]);
    assert.equal(match.ticket, "ticket-2");
    assert.equal(match.connected, true);
  });

  test("a `capacity` refusal keeps the lobby connection and joins again on it after retry_ms", async () => {
    const joins = [];
    const { WebSocket, sockets } = scriptedWebSocket((socket) => {
      socket.accept();
      if (socket.url.pathname === "/lobby") {
        socket.onClientMessage = () => {
          joins.push(Date.now());
          if (joins.length === 1) {
            socket.push({ type: "error", code: "capacity", message: "every node is full", retry_ms: 200 });
          } else {
            matchFound(socket);
          }
        };
      } else {
        socket.onClientMessage = (message) => {
          if (message.type === "hello") welcome(socket);
        };
      }
    });
    const client = new TickroomClient({ url: "ws://fake", token: "token", WebSocket, random: () => 0.5 });
    const match = await client.join("arena");
    assert.equal(joins.length, 2);
    assert.ok(joins[1] - joins[0] >= 190, "waited retry_ms");
    assert.equal(sockets.filter((socket) => socket.url.pathname === "/lobby").length, 1, "one lobby connection");
    assert.equal(match.connected, true);
  });

  test("a match that ended while the player was away ends with its match_end, not as lost", async () => {
    const { WebSocket, sockets } = scriptedWebSocket((socket) => {
      socket.accept();
      if (socket.url.pathname === "/lobby") {
        socket.onClientMessage = () => matchFound(socket, "ticket-1");
      } else if (sockets.filter((s) => s.url.pathname === "/game").length === 1) {
        socket.onClientMessage = (message) => {
          if (message.type === "hello") welcome(socket);
        };
      } else {
        // Back after the end: the server answers the hello with the match's match_end and closes 1000.
        socket.onClientMessage = (message) => {
          if (message.type !== "hello") return;
          socket.push({ type: "match_end", reason: "time", duration_ms: 60000, match: "m-1", results: [] });
          socket.drop(1000);
        };
      }
    });
    const client = new TickroomClient({ url: "ws://fake", token: "token", WebSocket, random: () => 0.5 });
    const match = await client.join("arena");
    const ends = [];
    match.onEnd = (message) => ends.push(message.match);
    sockets[1].drop(1006);
    const outcome = await match.finished;
    assert.deepEqual(outcome, { reason: "ended" });
    assert.deepEqual(ends, ["m-1"]);
    assert.equal(match.result.reason, "time");
    assert.equal(match.reconnecting, false);
  });

  test("a match over before the first hello resolves join with a finished match holding its result", async () => {
    const { WebSocket } = scriptedWebSocket((socket) => {
      socket.accept();
      if (socket.url.pathname === "/lobby") {
        socket.onClientMessage = () => matchFound(socket, "ticket-1");
      } else {
        socket.onClientMessage = (message) => {
          if (message.type !== "hello") return;
          socket.push({ type: "match_end", reason: "kills", duration_ms: 5000, match: "m-2", results: [] });
          socket.drop(1000);
        };
      }
    });
    const client = new TickroomClient({ url: "ws://fake", token: "token", WebSocket, random: () => 0.5 });
    const match = await client.join("arena");
    assert.deepEqual(await match.finished, { reason: "ended" });
    assert.equal(match.result.match, "m-2");
    assert.equal(match.connected, false);
  });

  test("gives up with reconnect_failed once the grace is over", async () => {
    let nodeGone = false;
    const { WebSocket } = scriptedWebSocket((socket) => {
      if (nodeGone) {
        socket.drop(1006); // every connection fails from now on
        return;
      }
      socket.accept();
      socket.onClientMessage = (message) => {
        if (message.type === "join") matchFound(socket);
        if (message.type === "hello") {
          welcome(socket);
          nodeGone = true;
        }
      };
    });
    const client = new TickroomClient({ url: "ws://fake", token: "token", WebSocket, reconnectGraceMs: 1500 });
    const match = await client.join("arena");
    const errors = [];
    match.onError = (error) => errors.push(error);
    match.socket.drop(1006);
    const outcome = await match.finished;
    assert.equal(outcome.reason, "error");
    assert.equal(outcome.error.code, "reconnect_failed");
    assert.deepEqual(errors.map((error) => error.code), ["reconnect_failed"]);
  });

  test("a connection that fails with an error and no close (Node 20's own WebSocket) counts as dropped", async () => {
    let attempts = 0;
    class ErrorOnlySocket extends EventTarget {
      constructor() {
        super();
        this.readyState = 0;
        attempts += 1;
        setTimeout(() => {
          this.readyState = 3;
          this.dispatchEvent(new Event("error")); // as undici 6 does for a refused connection: no `close` follows
        }, 0);
      }

      close() {}
    }
    const client = new TickroomClient({ url: "ws://fake", token: "token", WebSocket: ErrorOnlySocket });
    await assert.rejects(client.join("arena"), (error) => error instanceof TickroomError && error.code === "connect_failed"
      && error.closeCode === 1006);
    assert.equal(attempts, 1);
  });

  test("a match that did not come back ends with match_lost and the lobby's new offer", async () => {
    let lobbyVisits = 0;
    const { WebSocket } = scriptedWebSocket((socket) => {
      socket.accept();
      if (socket.url.pathname === "/lobby") {
        lobbyVisits += 1;
        socket.onClientMessage = () => matchFound(socket, "t", lobbyVisits === 1 ? ROOM : "room-new");
      } else {
        socket.onClientMessage = (message) => {
          if (message.type === "hello") welcome(socket);
        };
      }
    });
    const match = await new TickroomClient({ url: "ws://fake", token: "token", WebSocket }).join("arena");
    match.socket.drop(1006);
    const outcome = await match.finished;
    assert.ok(outcome.error instanceof TickroomError);
    assert.equal(outcome.error.code, "match_lost");
    assert.equal(outcome.error.matchFound.room, "room-new");
  });

  test("an in-session error that closes ends the match with it; one that does not goes to onError only", async () => {
    const { WebSocket } = scriptedWebSocket((socket) => {
      socket.accept();
      if (socket.url.pathname === "/lobby") {
        socket.onClientMessage = () => matchFound(socket);
      } else {
        socket.onClientMessage = (message) => {
          if (message.type === "hello") welcome(socket);
          if (message.type === "roll") socket.push({ type: "error", code: "not_your_roll", message: "wait" });
          if (message.type === "chat") {
            socket.push({ type: "error", code: "rate_limited", message: "slow down" });
            socket.drop(1008);
          }
        };
      }
    });
    const match = await new TickroomClient({ url: "ws://fake", token: "token", WebSocket }).join("dice");
    const errors = [];
    match.onError = (error) => errors.push([error.code, error.fatal]);
    match.send({ type: "roll" });
    await waitFor(() => errors.length === 1, 2000, "the refusal");
    match.send({ type: "chat", text: "hi" });
    const outcome = await match.finished;
    assert.equal(outcome.error.code, "rate_limited");
    assert.deepEqual(errors, [["not_your_roll", false], ["rate_limited", true]]);
  });
});
