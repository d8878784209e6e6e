// Every game's view, by mode. A game without one of its own gets the generic view (its state as JSON, and a box
// to send any message), so a game installed from another package is playable here too.
import { arenaView } from "./arena.js";
import { diceView } from "./dice.js";
import { relayView } from "./relay.js";
import { tictactoeView } from "./tictactoe.js";
import { typingView } from "./typing.js";
import { el, eventLog } from "./common.js";

export const VIEWS = { arena: arenaView, dice: diceView, relay: relayView, tictactoe: tictactoeView, typing: typingView };

export function genericView(container, { send, spectator }) {
  const state = el("pre", { className: "state" });
  const log = eventLog();
  const input = el("input", { placeholder: '{"type": "…"}', spellcheck: false, disabled: spectator });
  const button = el("button", { type: "button", textContent: "send", disabled: spectator });
  button.addEventListener("click", () => {
    try {
      send(JSON.parse(input.value));
    } catch (error) {
      log.add(`not JSON: ${error.message}`);
    }
  });
  container.append(el("h2", { textContent: "State" }), state, el("div", { className: "row" }, input, button), log.element);
  return {
    welcome(welcome) { state.textContent = JSON.stringify(welcome.view ?? {}, null, 1); },
    state(message) { state.textContent = JSON.stringify(message, null, 1); },
    event(event) { log.add(JSON.stringify(event)); },
    end() {},
    destroy() {},
  };
}
