// The typing race: everyone types the same text; each key is one `key` message; the state shows how far each got.
import { el, eventLog, namer, secondsLeft } from "./common.js";

export function typingView(container, { you, send, spectator }) {
  const names = namer();
  const text = el("p", { className: "race-text" });
  const input = el("input", { className: "race-input", placeholder: spectator ? "watching" : "type here when the race starts",
    spellcheck: false, autocomplete: "off", disabled: spectator });
  const bars = el("div", { className: "bars" });
  const clock = el("p", { className: "expiry" });
  const log = eventLog();
  container.append(el("h2", { textContent: "Typing race" }), clock, text, input, bars, log.element);
  let words = "";
  let length = 1;
  let last = null;
  let arrived = performance.now();

  input.addEventListener("keydown", (event) => {
    if (event.key.length !== 1 || event.ctrlKey || event.metaKey) return; // one character a key, as the protocol says
    event.preventDefault();
    send({ type: "key", c: event.key });
  });

  function showText(pos) {
    const done = el("span", { className: "done", textContent: words.slice(0, pos) });
    const next = el("span", { className: "next", textContent: words.slice(pos, pos + 1) });
    text.replaceChildren(done, next, words.slice(pos + 1));
  }

  function render(state) {
    last = state;
    arrived = performance.now();
    length = state.length ?? length;
    names.learn(state.players);
    const me = (state.players ?? []).find((player) => player.p === you);
    showText(me?.pos ?? 0);
    input.disabled = spectator || !!me?.finished || state.ends_ms == null;
    bars.replaceChildren(...(state.players ?? []).map((player) => el("div", { className: `bar${player.p === you ? " you" : ""}` },
      el("span", { textContent: `${names.of(player.p)}${player.place ? ` — #${player.place}` : ""} (${player.errors} errors)` }),
      el("progress", { max: length, value: player.pos }))));
    tick();
  }

  function tick() {
    const left = last ? secondsLeft(last.ends_ms, last.now == null ? null : last.now + (performance.now() - arrived)) : null;
    clock.textContent = left == null ? "Waiting for the start." : `${left} s left`;
  }
  const timer = setInterval(tick, 250);

  return {
    welcome(welcome) {
      words = welcome.text ?? words;
      names.learn(welcome.players);
      showText(0);
    },
    state: render,
    event(event) {
      if (event.kind === "finished") {
        log.add(`${names.of(event.p)} finished #${event.place}: ${event.wpm} wpm, ${Math.round(event.accuracy * 100)} % accuracy`);
      } else {
        log.add(JSON.stringify(event));
      }
    },
    end() {
      input.disabled = true;
    },
    destroy() {
      clearInterval(timer);
    },
  };
}
