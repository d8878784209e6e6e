// The arena on a canvas: states drawn 100 ms behind the newest (StateBuffer interpolation), WASD / arrow keys
// move (an `input` on every change, and again every 200 ms while held), a click fires toward the pointer with the
// tick on screen as `seen_tick` (the server's lag compensation).
import { InputPredictor, StateBuffer } from "../tickroom.js";
import { el, eventLog, namer } from "./common.js";

const KEYS = {
  ArrowUp: [0, -1], KeyW: [0, -1], ArrowDown: [0, 1], KeyS: [0, 1],
  ArrowLeft: [-1, 0], KeyA: [-1, 0], ArrowRight: [1, 0], KeyD: [1, 0],
};
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
const RADIUS = 20; // the server's hit radius, for the drawing

export function arenaView(container, { you, send, spectator }) {
  const canvas = el("canvas", { id: "arena", width: 600, height: 600, tabIndex: 0 });
  const scores = el("table", { className: "scores" });
  const log = eventLog(12);
  const help = el("p", { className: "help", textContent: spectator
    ? "Watching: read-only."
    : "Move with WASD or the arrow keys, click to fire toward the pointer." });
  container.append(el("div", { className: "arena" }, canvas, el("div", {}, help, scores, log.element)));
  const context = canvas.getContext("2d");
  const buffer = new StateBuffer({ delayMs: 100 });
  const predictor = new InputPredictor();
  const names = namer();
  let size = { w: 1000, h: 1000 };
  let colors = new Map();
  const held = new Set();
  let direction = [0, 0];
  let frame = 0;
  let repeat = 0;

  function sendInput() {
    if (spectator) return;
    let [dx, dy] = [0, 0];
    for (const key of held) {
      dx += KEYS[key][0];
      dy += KEYS[key][1];
    }
    const length = Math.hypot(dx, dy);
    if (length > 0) [dx, dy] = [dx / length, dy / length];
    direction = [dx, dy];
    send(predictor.stamp({ type: "input", dx, dy }));
  }

  function onKey(event, down) {
    if (!(event.code in KEYS) || event.target instanceof HTMLInputElement) return;
    event.preventDefault();
    if (down === held.has(event.code)) return; // key repeat
    if (down) held.add(event.code);
    else held.delete(event.code);
    sendInput();
  }
  const keydown = (event) => onKey(event, true);
  const keyup = (event) => onKey(event, false);
  const blur = () => {
    held.clear();
    sendInput();
  };
  window.addEventListener("keydown", keydown);
  window.addEventListener("keyup", keyup);
  window.addEventListener("blur", blur);
  repeat = setInterval(() => {
    if (direction[0] || direction[1]) sendInput(); // the latest input wins: keep it fresh while held
  }, 200);

  canvas.addEventListener("mousedown", (event) => {
    if (spectator) return;
    const view = buffer.at();
    const me = view?.players?.find((player) => player.p === you);
    if (!me) return;
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * size.w;
    const y = ((event.clientY - rect.top) / rect.height) * size.h;
    const fire = { type: "fire", angle: Math.atan2(y - me.y, x - me.x) };
    if (buffer.shownTick !== null) fire.seen_tick = buffer.shownTick;
    send(predictor.stamp(fire));
  });

  function draw() {
    frame = requestAnimationFrame(draw);
    const view = buffer.at();
    const scaleX = canvas.width / size.w;
    const scaleY = canvas.height / size.h;
    context.fillStyle = "#11151c";
    context.fillRect(0, 0, canvas.width, canvas.height);
    if (!view) return;
    for (const shot of view.projectiles ?? []) {
      context.fillStyle = colors.get(shot.p) ?? "#fff";
      context.beginPath();
      context.arc(shot.x * scaleX, shot.y * scaleY, 3, 0, Math.PI * 2);
      context.fill();
    }
    for (const player of view.players ?? []) {
      const x = player.x * scaleX;
      const y = player.y * scaleY;
      context.globalAlpha = player.alive === false ? 0.25 : 1;
      context.fillStyle = colors.get(player.p) ?? COLORS[player.p % COLORS.length];
      context.beginPath();
      context.arc(x, y, RADIUS * scaleX, 0, Math.PI * 2);
      context.fill();
      if (player.p === you) {
        context.strokeStyle = "#fff";
        context.lineWidth = 3;
        context.stroke();
      }
      context.fillStyle = "#222";
      context.fillRect(x - 20, y - 30, 40, 5);
      context.fillStyle = "#7f7";
      context.fillRect(x - 20, y - 30, 40 * Math.max(0, player.hp ?? 0) / 100, 5);
      context.fillStyle = "#ddd";
      context.font = "12px sans-serif";
      context.textAlign = "center";
      context.fillText(names.of(player.p), x, y + 34);
      context.globalAlpha = 1;
    }
  }
  frame = requestAnimationFrame(draw);

  function showScores(state) {
    const rows = [...(state.players ?? [])].sort((a, b) => (b.sc ?? 0) - (a.sc ?? 0)).map((player) => el("tr",
      { className: player.p === you ? "you" : "" },
      el("td", { textContent: names.of(player.p) }), el("td", { textContent: `${player.k ?? 0} kills` }),
      el("td", { textContent: `${player.d ?? 0} deaths` }), el("td", { textContent: `${player.sc ?? 0}` })));
    scores.replaceChildren(...rows);
  }

  return {
    welcome(welcome) {
      if (welcome.arena) size = welcome.arena;
      names.learn(welcome.players);
      colors = new Map((welcome.players ?? []).map((player) => [player.p, player.color]));
      buffer.clear();
      predictor.reset();
    },
    state(state) {
      buffer.push(state);
      predictor.reconcile(state, you);
      showScores(state);
    },
    event(event) {
      if (event.kind === "join") {
        names.learn([event]);
        if (event.color) colors.set(event.p, event.color);
      }
      const line = {
        kill: () => `${names.of(event.p)} got ${names.of(event.target)}`,
        hit: () => `${names.of(event.p)} hit ${names.of(event.target)} (${event.hp} hp left)`,
        join: () => `${names.of(event.p)} is in`,
        leave: () => `${names.of(event.p)} is away`,
        chat: () => `${names.of(event.p)}: ${event.text}`,
        phase: () => `the room is ${event.state}`,
        respawn: () => `${names.of(event.p)} is back`,
        result_saved: () => "the result is saved",
      }[event.kind];
      log.add(line ? line() : JSON.stringify(event));
    },
    end() {
      held.clear();
    },
    destroy() {
      cancelAnimationFrame(frame);
      clearInterval(repeat);
      window.removeEventListener("keydown", keydown);
      window.removeEventListener("keyup", keyup);
      window.removeEventListener("blur", blur);
    },
  };
}
