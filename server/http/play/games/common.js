// Small DOM helpers shared by the games' views.

/** `el("button", {textContent: "roll"}, child...)`: an element with properties (and data-* via `dataset`). */
export function el(tag, properties = {}, ...children) {
  const element = document.createElement(tag);
  const { dataset, ...rest } = properties;
  Object.assign(element, rest);
  if (dataset) Object.assign(element.dataset, dataset);
  element.append(...children);
  return element;
}

/** A list of recent lines (events, messages), newest first, at most `max`. */
export function eventLog(max = 30) {
  const element = el("ul", { className: "log" });
  return {
    element,
    add(text) {
      element.prepend(el("li", { textContent: text }));
      while (element.children.length > max) element.lastChild.remove();
    },
  };
}

/** Whole seconds left until `atMs` on the room clock, as a state's `now` tells it. */
export function secondsLeft(atMs, nowMs) {
  if (atMs == null || nowMs == null) return null;
  return Math.max(0, Math.ceil((atMs - nowMs) / 1000));
}

/** A name for pid `p` from the welcome's roster, or the state's own list. */
export function namer() {
  const names = new Map();
  return {
    learn(players) {
      for (const player of players ?? []) if (player.name) names.set(player.p, player.name);
    },
    of(p) {
      return names.get(p) ?? `player ${p}`;
    },
  };
}
