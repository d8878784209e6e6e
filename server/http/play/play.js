// The playground: join a game through the lobby with the Tickroom client library, play it, watch a room.
// Each game's view is a module of games/ (arena.js, dice.js...), with the same small interface:
//   createView(container, {you, send, spectator}) -> {welcome(w), state(s), event(e), end(m), destroy()}
// Test hooks (tests/test_browser.py): body[data-phase], #game[data-states|data-you|data-room], #error[data-code],
// #ranking li, #leaderboard tr, #rooms button.watch[data-room].

import { TickroomClient, TickroomError } from "./tickroom.js";
import { VIEWS, genericView } from "./games/index.js";

const $ = (selector) => document.querySelector(selector);
const params = new URLSearchParams(location.search);
const WS_BASE = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
const STORE = sessionStorage; // per tab, and it survives a reload: a reloaded tab comes back to its seat
const KEYS = { token: "tickroom.token", match: "tickroom.match" };

const ui = {
  name: $("#name"), mode: $("#mode"), join: $("#join"), leave: $("#leave"), token: $("#token"),
  useToken: $("#use-token"), error: $("#error"), banner: $("#banner"), status: $("#status"), game: $("#game"),
  ranking: $("#ranking"), leaderboard: $("#leaderboard tbody"), leaderboardMode: $("#leaderboard-mode"),
  rooms: $("#rooms"), who: $("#who"),
};

const session = { client: null, match: null, view: null, states: 0, watching: null };
window.tickroom = session; // for tests and for poking at from the console

// -- page state ----------------------------------------------------------------------------------------------

function setPhase(phase, text) {
  document.body.dataset.phase = phase;
  if (text !== undefined) ui.status.textContent = text;
  const busy = ["lobby", "countdown", "playing", "reconnecting", "spectating"].includes(phase);
  ui.join.hidden = busy;
  ui.leave.hidden = !busy;
  ui.name.disabled = ui.mode.disabled = busy;
}

function showError(code, message) {
  ui.error.hidden = false;
  ui.error.dataset.code = code;
  ui.error.textContent = `${code}: ${message}`;
}

function clearError() {
  ui.error.hidden = true;
  delete ui.error.dataset.code;
  ui.error.textContent = "";
}

function banner(text) {
  ui.banner.hidden = !text;
  ui.banner.textContent = text ?? "";
}

function errorOf(error) {
  if (error instanceof TickroomError) return error;
  return new TickroomError("client_error", String(error?.message ?? error));
}

// -- tokens --------------------------------------------------------------------------------------------------

function storedToken() {
  try {
    return JSON.parse(STORE.getItem(KEYS.token) ?? "null");
  } catch {
    return null;
  }
}

function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

/** The token to play as `name`: pasted or in the URL, else this tab's (same name, not about to expire), else a
 * new one from the node's development endpoint. */
async function tokenFor(name) {
  const given = params.get("token");
  if (given) return given;
  const kept = storedToken();
  if (kept && kept.name === name && (claimsOf(kept.token)?.exp ?? 0) * 1000 > Date.now() + 60_000) return kept.token;
  const response = await fetch("/dev/token", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 404) {
      $("#token-box").open = true;
      throw new TickroomError("not_found", "this node mints no tokens (production): paste a player token under Token");
    }
    throw new TickroomError(body.error ?? "bad_request", body.message ?? `POST /dev/token: ${response.status}`);
  }
  STORE.setItem(KEYS.token, JSON.stringify({ name, token: body.token }));
  return body.token;
}

function useToken(token) {
  const claims = claimsOf(token);
  if (!claims?.name) {
    showError("token_invalid", "that is not a Tickroom player token");
    return;
  }
  STORE.setItem(KEYS.token, JSON.stringify({ name: claims.name, token }));
  ui.name.value = claims.name;
  clearError();
}

// -- playing -------------------------------------------------------------------------------------------------

function viewFor(mode) {
  return VIEWS[mode] ?? genericView;
}

function startView(match, spectator) {
  session.view?.destroy();
  ui.game.replaceChildren();
  session.states = 0;
  ui.game.dataset.states = "0";
  ui.game.dataset.you = spectator ? "" : String(match.you);
  ui.game.dataset.room = match.room;
  ui.ranking.replaceChildren();
  const mode = match.mode ?? match.welcome?.mode;
  session.view = viewFor(mode)(ui.game, { you: spectator ? null : match.you, spectator, send: (m) => match.send(m) });
  if (match.welcome) session.view.welcome(match.welcome);
}

function follow(match, { spectator }) {
  session.match = match;
  startView(match, spectator);
  match.onState = (state) => {
    session.view.state(state);
    session.states += 1;
    ui.game.dataset.states = String(session.states);
  };
  match.onEvent = (event) => session.view.event(event);
  match.onEnd = (end) => {
    session.view.end(end);
    showRanking(end, match);
    STORE.removeItem(KEYS.match);
    setPhase("ended", `Match over (${end.reason ?? "ended"}).`);
    refreshLeaderboard(match.mode ?? ui.mode.value, { afterMatch: true });
  };
  match.onError = (error) => {
    showError(error.code, error.message);
    if (error.fatal) STORE.removeItem(KEYS.match);
  };
  match.onReconnecting = ({ reason }) => {
    setPhase("reconnecting", "Connection lost: coming back to your seat…");
    banner(`reconnecting (${reason})…`);
  };
  match.onReconnected = ({ welcome, downtimeMs }) => {
    banner(null);
    clearError();
    setPhase("playing", `Back in room ${match.room} after ${Math.round(downtimeMs)} ms.`);
    if (welcome) session.view.welcome(welcome);
    remember(match);
  };
  match.finished.then(({ reason }) => {
    if (session.match !== match) return;
    if (reason === "left") setPhase("idle", "You left the match.");
    else if (reason === "error" && document.body.dataset.phase !== "ended") setPhase("error");
    else if (spectator && document.body.dataset.phase === "spectating") setPhase("ended", "The room closed.");
  });
}

function remember(match) {
  STORE.setItem(KEYS.match, JSON.stringify({ mode: match.mode, room: match.room, ticket: match.ticket }));
}

async function join({ mode, ticket } = {}) {
  clearError();
  mode = mode ?? ui.mode.value;
  const name = ui.name.value.trim();
  if (!name) {
    showError("bad_request", "pick a name first");
    return;
  }
  setPhase("lobby", `Joining ${mode}…`);
  try {
    const token = await tokenFor(name);
    ui.who.textContent = `playing as ${claimsOf(token)?.name ?? name}`;
    const client = new TickroomClient({ url: WS_BASE, token });
    session.client = client;
    const match = await client.join(mode, {
      ticket,
      onLobby: (lobby) => {
        const waiting = lobby.players?.length ?? 0;
        if (lobby.status === "countdown") {
          setPhase("countdown", `Starting in ${Math.ceil((lobby.countdown_ms ?? 0) / 1000)} s (${waiting} players)`);
        } else if (lobby.status === "recovering") {
          setPhase("lobby", "Your match is being brought back…");
        } else if (lobby.status === "queued") {
          setPhase("lobby", "Queued: no node can host a new room right now…");
        } else {
          setPhase("lobby", `In the lobby: ${waiting} of ${lobby.min ?? "?"} players needed to start`);
        }
      },
      onCountdown: (countdown) => setPhase("countdown", `Starting in ${Math.ceil(countdown.ms / 1000)} s`),
    });
    remember(match);
    follow(match, { spectator: false });
    setPhase("playing", `Playing ${match.mode} in room ${match.room} as player ${match.you}.`);
  } catch (error) {
    const failure = errorOf(error);
    STORE.removeItem(KEYS.match);
    showError(failure.code, failure.message);
    setPhase("error", "Could not join.");
  }
}

async function spectate(room, mode) {
  clearError();
  setPhase("spectating", `Watching room ${room}…`);
  try {
    const info = await getJSON(`/lobby/rooms/${encodeURIComponent(room)}?mode=${encodeURIComponent(mode)}`);
    const name = ui.name.value.trim() || "spectator";
    const token = await tokenFor(name);
    const client = new TickroomClient({ url: WS_BASE, token });
    session.client = client;
    const match = await client.spectate(room, { url: info.url ? new URL(info.url).origin.replace(/^http/, "ws") : WS_BASE });
    session.watching = room;
    follow(match, { spectator: true });
    setPhase("spectating", `Watching ${mode} room ${room} (read-only).`);
  } catch (error) {
    const failure = errorOf(error);
    showError(failure.code, failure.message);
    setPhase("error", "Could not watch that room.");
  }
}

async function leave() {
  const match = session.match;
  STORE.removeItem(KEYS.match);
  if (match) await match.leave().catch(() => {});
  setPhase("idle", "Left.");
}

function showRanking(end, match) {
  const names = new Map((match.welcome?.players ?? match.players ?? []).map((player) => [player.p, player.name]));
  ui.ranking.replaceChildren(...(end.ranking ?? []).map((entry) => {
    const item = document.createElement("li");
    const figures = Object.entries(entry).filter(([key]) => !["p", "id", "rank", "name", "score"].includes(key))
      .map(([key, value]) => `${key} ${typeof value === "number" ? Math.round(value * 100) / 100 : value}`);
    item.textContent = `#${entry.rank} ${entry.name ?? names.get(entry.p) ?? `player ${entry.p}`}` +
      ` — score ${entry.score}${figures.length ? ` (${figures.join(", ")})` : ""}${entry.p === match.you ? " (you)" : ""}`;
    return item;
  }));
}

// -- the node's HTTP endpoints ---------------------------------------------------------------------------------

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new TickroomError(body.error ?? "http_error", body.message ?? `${path}: ${response.status}`);
  return body;
}

async function loadModes() {
  try {
    const { modes } = await getJSON("/modes");
    ui.mode.replaceChildren(...modes.map((mode) => {
      const option = document.createElement("option");
      option.value = mode.mode ?? mode.name;
      option.textContent = `${mode.title ?? option.value} (${option.value})`;
      return option;
    }));
  } catch (error) {
    showError(errorOf(error).code, `could not list the games: ${errorOf(error).message}`);
  }
  const wanted = params.get("mode");
  if (wanted && ![...ui.mode.options].some((option) => option.value === wanted)) {
    const option = document.createElement("option"); // kept, so that the node says what it thinks of it
    option.value = option.textContent = wanted;
    ui.mode.append(option);
  }
  if (wanted) ui.mode.value = wanted;
}

async function refreshLeaderboard(mode = ui.mode.value, { afterMatch = false } = {}) {
  ui.leaderboardMode.textContent = mode ? `(${mode})` : "";
  // Results reach Postgres a moment after match_end: look again for a few seconds after a match.
  for (let attempt = 0; attempt < (afterMatch ? 10 : 1); attempt++) {
    try {
      const { players } = await getJSON(`/leaderboard?mode=${encodeURIComponent(mode)}&limit=10`);
      ui.leaderboard.replaceChildren(...players.map((entry) => {
        const row = document.createElement("tr");
        for (const value of [`#${entry.rank}`, entry.name, entry.score]) {
          const cell = document.createElement("td");
          cell.textContent = String(value);
          row.append(cell);
        }
        return row;
      }));
      if (!afterMatch || players.length > 0) return;
    } catch {
      ui.leaderboard.replaceChildren(); // a node without records: nothing to show
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function refreshRooms() {
  const mode = ui.mode.value;
  if (!mode) return;
  try {
    const { rooms } = await getJSON(`/lobby/rooms?mode=${encodeURIComponent(mode)}`);
    ui.rooms.replaceChildren(...rooms.map((room) => {
      const item = document.createElement("li");
      item.textContent = `${room.id} — ${room.state}, ${room.players} players on ${room.node} `;
      if (room.state === "running") {
        const watch = document.createElement("button");
        watch.type = "button";
        watch.className = "watch";
        watch.dataset.room = room.id;
        watch.textContent = "watch";
        watch.disabled = session.watching === room.id;
        watch.addEventListener("click", () => spectate(room.id, mode));
        item.append(watch);
      }
      return item;
    }));
    if (rooms.length === 0) ui.rooms.textContent = "No rooms right now.";
  } catch {
    ui.rooms.textContent = "The lobby is not reachable.";
  }
}

// -- start ---------------------------------------------------------------------------------------------------

async function main() {
  ui.name.value = params.get("name") ?? storedToken()?.name ?? `player-${Math.random().toString(36).slice(2, 6)}`;
  if (params.get("token")) ui.token.value = params.get("token");
  ui.join.addEventListener("click", () => join());
  ui.leave.addEventListener("click", () => leave());
  ui.useToken.addEventListener("click", () => useToken(ui.token.value.trim()));
  ui.mode.addEventListener("change", () => {
    refreshRooms();
    refreshLeaderboard();
  });
  await loadModes();
  refreshRooms();
  refreshLeaderboard();
  setInterval(refreshRooms, 2000);

  let kept = null;
  try {
    kept = JSON.parse(STORE.getItem(KEYS.match) ?? "null");
  } catch {
    kept = null;
  }
  if (kept?.mode) {
    ui.mode.value = kept.mode;
    await join({ mode: kept.mode, ticket: kept.ticket }); // a reload mid-match: back to the same seat
  } else if (params.get("spectate")) {
    await spectate(params.get("spectate"), ui.mode.value);
  } else if (params.get("autojoin") === "1") {
    await join();
  }
}

main();
