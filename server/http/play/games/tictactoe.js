// Tic-tac-toe with a waiting line: two players hold X and O, the others wait their turn in line.
import { el, eventLog, namer, secondsLeft } from "./common.js";

export function tictactoeView(container, { you, send, spectator }) {
  const names = namer();
  const cells = Array.from({ length: 9 }, (_, cell) => {
    const button = el("button", { type: "button", className: "cell", dataset: { cell: String(cell) } });
    button.addEventListener("click", () => send({ type: "move", cell }));
    return button;
  });
  const board = el("div", { className: "board" }, ...cells);
  const info = el("p", { className: "turn" });
  const line = el("ol", { className: "line" });
  const table = el("table", { className: "scores" });
  const log = eventLog();
  container.append(el("h2", { textContent: "Tic-tac-toe" }), info, board,
    el("div", { className: "row" }, el("div", {}, el("h3", { textContent: "Players" }), table),
      el("div", {}, el("h3", { textContent: "Line" }), line)), log.element);
  let last = null;
  let arrived = performance.now();

  function render(state) {
    last = state;
    arrived = performance.now();
    names.learn(state.players);
    const myTurn = !spectator && state.turn === you;
    state.board.forEach((mark, cell) => {
      cells[cell].textContent = mark;
      cells[cell].disabled = !myTurn || mark !== "";
    });
    table.replaceChildren(...(state.players ?? []).map((player) => el("tr", { className: player.p === you ? "you" : "" },
      el("td", { textContent: names.of(player.p) + (player.p === state.x ? " (X)" : player.p === state.o ? " (O)" : "") }),
      el("td", { textContent: `${player.wins} won, ${player.losses} lost, ${player.draws} drawn` }))));
    line.replaceChildren(...(state.line ?? []).map((place) => el("li", { textContent: names.of(place.p) + (place.p === you ? " (you)" : "") })));
    tick();
  }

  function tick() {
    if (!last) return;
    if (last.turn == null) {
      info.textContent = last.board_no ? "The match is over." : "Waiting for the start.";
      return;
    }
    const left = secondsLeft(last.turn_ends_ms, last.now == null ? null : last.now + (performance.now() - arrived));
    const mark = last.turn === last.x ? "X" : "O";
    const who = last.turn === you ? "Your turn" : `${names.of(last.turn)}'s turn`;
    const waiting = (last.line ?? []).find((place) => place.p === you);
    info.textContent = `Board ${last.board_no}: ${who} (${mark})${left != null ? ` — ${left} s left` : ""}` +
      (waiting ? `. You are number ${waiting.pos} in line.` : "");
  }
  const timer = setInterval(tick, 250);

  return {
    welcome(welcome) {
      names.learn(welcome.players);
      if (welcome.view) render(welcome.view);
    },
    state: render,
    event(event) {
      const text = {
        move: () => `${names.of(event.p)} put ${event.mark} on ${event.cell}`,
        board_over: () => (event.draw ? "a draw" : `${names.of(event.winner)} won the board (${event.reason})`),
        seat: () => `${names.of(event.p)} plays ${event.mark}`,
      }[event.kind];
      log.add(text ? text() : JSON.stringify(event));
    },
    end() {
      for (const cell of cells) cell.disabled = true;
    },
    destroy() {
      clearInterval(timer);
    },
  };
}
