// Dice: everyone rolls in each throw, the lowest roll loses a life (ties roll off), the last one with lives wins.
import { el, eventLog, namer, secondsLeft } from "./common.js";

export function diceView(container, { you, send, spectator }) {
  const names = namer();
  const table = el("table", { className: "dice" });
  const info = el("p", { className: "turn" });
  const roll = el("button", { type: "button", id: "roll", textContent: "Roll", disabled: true });
  const log = eventLog();
  roll.addEventListener("click", () => send({ type: "roll" }));
  container.append(el("h2", { textContent: "Dice" }), info, spectator ? "" : roll, table, log.element);
  let sides = 6;
  let timer = 0;
  let last = null;

  function render(state) {
    last = state;
    names.learn(state.players);
    const mine = !spectator && (state.to_roll ?? []).includes(you);
    roll.disabled = !mine;
    table.replaceChildren(...(state.players ?? []).map((player) => el("tr",
      { className: [player.p === you ? "you" : "", player.out ? "out" : ""].join(" ").trim() },
      el("td", { textContent: names.of(player.p) }),
      el("td", { textContent: "♥".repeat(Math.max(0, player.lives)) || "out" }),
      el("td", { className: "die", textContent: player.roll == null ? "–" : String(player.roll) }),
      el("td", { textContent: (state.to_roll ?? []).includes(player.p) ? "to roll" : "" }))));
    tick();
  }

  function tick() {
    if (!last) return;
    const left = secondsLeft(last.deadline_ms, last.now == null ? null : last.now + (performance.now() - arrived));
    const round = last.round ? `Round ${last.round}${last.rolloff ? `, roll-off ${last.rolloff}` : ""} (d${sides}).` : "Waiting for the start.";
    const who = (last.to_roll ?? []).map((p) => names.of(p)).join(", ");
    info.textContent = `${round} ${who ? `To roll: ${who}` : ""}${left != null && who ? ` — ${left} s left` : ""}`;
  }
  let arrived = performance.now();
  timer = setInterval(tick, 250);

  return {
    welcome(welcome) {
      sides = welcome.sides ?? sides;
      names.learn(welcome.players);
      if (welcome.view) {
        arrived = performance.now();
        render(welcome.view);
      }
    },
    state(state) {
      arrived = performance.now();
      render(state);
    },
    event(event) {
      const line = {
        roll: () => `${names.of(event.p)} rolled ${event.value}${event.auto ? " (rolled by the server)" : ""}`,
        rolloff: () => `roll-off: ${(event.players ?? []).map((p) => names.of(p)).join(", ")}`,
        round_lost: () => `${names.of(event.p)} lost round ${event.round} (${event.lives_left} lives left)`,
        out: () => `${names.of(event.p)} is out${event.released ? " (left)" : ""}`,
      }[event.kind];
      log.add(line ? line() : JSON.stringify(event));
    },
    end() {
      roll.disabled = true;
    },
    destroy() {
      clearInterval(timer);
    },
  };
}
