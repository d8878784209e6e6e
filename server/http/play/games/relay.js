// The relay room: members send each other any JSON (here: text), to everyone or to one, and pin one message.
import { el, eventLog, namer, secondsLeft } from "./common.js";

export function relayView(container, { you, send, spectator }) {
  const names = namer();
  const members = el("ul", { className: "members" });
  const pinned = el("p", { className: "pinned" });
  const expiry = el("p", { className: "expiry" });
  const text = el("input", { placeholder: "a message", maxLength: 500, disabled: spectator });
  const to = el("select", { disabled: spectator });
  const sendButton = el("button", { type: "button", textContent: "send", disabled: spectator });
  const pin = el("button", { type: "button", textContent: "pin", disabled: spectator });
  const unpin = el("button", { type: "button", textContent: "unpin", disabled: spectator });
  const log = eventLog(50);
  function payload() {
    return { text: text.value };
  }
  sendButton.addEventListener("click", () => {
    if (!text.value) return;
    const message = { type: "send", payload: payload() };
    if (to.value) message.to = Number(to.value);
    send(message);
    log.add(`you${to.value ? ` → ${names.of(Number(to.value))}` : ""}: ${text.value}`);
    text.value = "";
  });
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter") sendButton.click();
  });
  pin.addEventListener("click", () => text.value && send({ type: "pin", payload: payload() }));
  unpin.addEventListener("click", () => send({ type: "unpin" }));
  container.append(el("h2", { textContent: "Relay" }), pinned, expiry,
    el("div", { className: "row" }, text, to, sendButton, pin, unpin), el("h3", { textContent: "Members" }), members,
    log.element);

  const show = (value) => (typeof value?.text === "string" ? value.text : JSON.stringify(value));

  function render(state) {
    names.learn(state.members);
    members.replaceChildren(...(state.members ?? []).map((member) => el("li", { className: member.p === you ? "you" : "",
      textContent: `${names.of(member.p)} — sent ${member.sent}, received ${member.received}` })));
    const choice = to.value;
    to.replaceChildren(el("option", { value: "", textContent: "everyone" }), ...(state.members ?? [])
      .filter((member) => member.p !== you).map((member) => el("option", { value: String(member.p), textContent: names.of(member.p) })));
    to.value = [...to.options].some((option) => option.value === choice) ? choice : "";
    pinned.textContent = state.pinned ? `📌 ${names.of(state.pinned.by)}: ${show(state.pinned.payload)}` : "Nothing pinned.";
    const left = secondsLeft(state.expires_ms, state.now);
    expiry.textContent = left == null ? "" : `The room expires in ${left} s unless someone is active.`;
  }

  return {
    welcome(welcome) {
      names.learn(welcome.players);
      if (welcome.view) render(welcome.view);
    },
    state: render,
    event(event) {
      const line = {
        message: () => `${names.of(event.from)}${event.direct ? " (to you)" : ""}: ${show(event.payload)}`,
        sent: () => null,
        pinned: () => `${names.of(event.by)} pinned: ${show(event.payload)}`,
        unpinned: () => `${names.of(event.by)} unpinned`,
        member_joined: () => `${event.name} joined`,
        member_left: () => `${names.of(event.p)} left`,
        expiring: () => `the room expires in ${Math.round(event.in_ms / 1000)} s`,
      }[event.kind];
      if (event.kind === "member_joined") names.learn([event]);
      const text = line ? line() : JSON.stringify(event);
      if (text) log.add(text);
    },
    end() {
      for (const control of [text, to, sendButton, pin, unpin]) control.disabled = true;
    },
    destroy() {},
  };
}
