"""The playground (`/play`) in a real browser: Debian's chromium driven by Playwright, against a real lobby node with
Redis and Postgres. Three tabs play an arena match through the page, one reloads mid-match and is back in its
seat, a fourth tab watches as a spectator, and the end shows the ranking and the leaderboard; a refused connection
shows its error code on the page.

The page's test hooks (server/http/play/, kept by its authors): `body[data-phase]`, `#game[data-states]` (states
rendered), `#game[data-you]`, `#game[data-room]`, `#error[data-code]`, `#ranking li`, `#leaderboard tr`, `#rooms
button.watch[data-room]`, `canvas#arena`. When a test fails, each tab's screenshot is saved under
`test-artifacts/browser/` (or `$TICKROOM_ARTIFACTS/browser/`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from persistence.migrate import migrate_url
from server.app import App
from tests.serverkit import new_token, start_app, start_lobby_app

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("TICKROOM_ARTIFACTS", REPO / "test-artifacts")) / "browser"
# As the machine's notes say: without the background-networking flags Chromium keeps trying to reach Google's
# hosts, which a closed network refuses; as root it needs --no-sandbox.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
WAIT_MS = 15_000
MATCH_S = 25  # long enough for the reload and the spectator, short enough to see the end


@pytest.fixture(scope="module")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is not installed: as root ./scripts/test installs Debian's chromium with apt-get"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run the browser tests, not skip them
        pytest.skip(message)
    return CHROMIUM


class Tabs:
    """One browser context per player (its own sessionStorage, as separate people have), pages named for reports."""

    def __init__(self, browser: Any, base: str) -> None:
        self.browser = browser
        self.base = base
        self.pages: dict[str, Any] = {}
        self.console: dict[str, list[str]] = {}

    async def open(self, name: str, query: str, *, path: str = "/play/") -> Any:
        context = await self.browser.new_context(viewport={"width": 1100, "height": 800})
        page = await context.new_page()
        lines = self.console.setdefault(name, [])
        page.on("console", lambda message: lines.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: lines.append(f"pageerror: {error}"))
        self.pages[name] = page
        await page.goto(f"{self.base}{path}?{query}")
        return page

    async def screenshots(self, test_name: str) -> list[Path]:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        saved = []
        for name, page in self.pages.items():
            path = ARTIFACTS / f"{test_name}-{name}.png"
            try:
                await page.screenshot(path=str(path), full_page=True)
                (ARTIFACTS / f"{test_name}-{name}.console.txt").write_text("\n".join(self.console[name]))
                saved.append(path)
            except Exception as error:  # a crashed tab: the others are still worth saving
                (ARTIFACTS / f"{test_name}-{name}.error.txt").write_text(repr(error))
        return saved


@pytest.fixture
async def tabs(chromium: str, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Yields a function `tabs_for(app) -> Tabs`; on failure every open tab is saved as a screenshot."""
    made: list[Tabs] = []
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            def tabs_for(app: App) -> Tabs:
                made.append(Tabs(browser, f"http://127.0.0.1:{app.port}"))
                return made[-1]
            yield tabs_for
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                for tabs_made in made:
                    await tabs_made.screenshots(request.node.name)
        finally:
            await browser.close()


async def phase(page: Any, *phases: str, timeout_ms: int = WAIT_MS) -> None:
    wanted = list(phases)
    await page.wait_for_function("(wanted) => wanted.includes(document.body.dataset.phase)", arg=wanted,
                                 timeout=timeout_ms)


async def states(page: Any) -> int:
    return int(await page.get_attribute("#game", "data-states") or 0)


async def more_states(page: Any, than: int) -> int:
    await page.wait_for_function("(n) => Number(document.querySelector('#game').dataset.states || 0) > n",
                                 arg=than, timeout=WAIT_MS)
    return await states(page)


@pytest.fixture
async def arena_node(redis_url: str, fresh_database: str) -> AsyncIterator[App]:
    await migrate_url(fresh_database)
    app = await start_lobby_app(redis_url, database_url=fresh_database, persist=True, countdown_s=1.0,
                                match_time_s=MATCH_S)
    yield app
    await app.__aexit__(None, None, None)


async def test_three_tabs_play_an_arena_match_one_reloads_into_its_seat_and_a_spectator_watches(
        arena_node: App, tabs: Any) -> None:
    browser = tabs(arena_node)
    players = {name: await browser.open(name, f"name={name}&mode=arena&autojoin=1") for name in ("ann", "bob", "cyd")}
    for page in players.values():
        await phase(page, "playing")
    rooms = {await page.get_attribute("#game", "data-room") for page in players.values()}
    seats = {name: await page.get_attribute("#game", "data-you") for name, page in players.items()}
    assert len(rooms) == 1 and "" not in seats.values() and len(set(seats.values())) == 3, (rooms, seats)
    room = rooms.pop()
    for page in players.values():  # each tab renders the match as it goes
        await more_states(page, 10)
        assert await page.locator("canvas#arena").is_visible()
    ann = players["ann"]
    await ann.keyboard.down("ArrowRight")  # and plays it: the keyboard moves the player
    await ann.wait_for_timeout(300)
    await ann.keyboard.up("ArrowRight")
    await ann.wait_for_timeout(300)
    # Ann walks toward the nearest other player until in range (a shot flies 600 units), then clicks where her
    # canvas shows them: the mouse fires, and the shots hit.
    for _ in range(60):
        aim = await ann.evaluate("""() => {
            const match = window.tickroom.match;
            const size = match.welcome.arena;
            const me = match.state.players.find((entry) => entry.p === match.you);
            const others = match.state.players.filter((entry) => entry.p !== match.you && entry.alive);
            const distance = (other) => Math.hypot(other.x - me.x, other.y - me.y);
            const player = others.sort((a, b) => distance(a) - distance(b))[0];
            const box = document.querySelector("canvas#arena").getBoundingClientRect();
            return {far: distance(player) > 350, dx: player.x - me.x, dy: player.y - me.y,
                    click: [box.left + player.x / size.w * box.width, box.top + player.y / size.h * box.height]};
        }""")
        if aim["far"]:
            keys = [key for key, wanted in (("ArrowRight", aim["dx"] > 50), ("ArrowLeft", aim["dx"] < -50),
                                            ("ArrowDown", aim["dy"] > 50), ("ArrowUp", aim["dy"] < -50)) if wanted]
            for key in keys:
                await ann.keyboard.down(key)
            await ann.wait_for_timeout(250)
            for key in keys:
                await ann.keyboard.up(key)
            continue
        await ann.mouse.click(*aim["click"])
        await ann.wait_for_timeout(300)
        if await ann.evaluate("() => window.tickroom.match.state.players.some((entry) => entry.sc > 0)"):
            break
    await ann.wait_for_function("""(ann) => window.tickroom.match.state.players
        .find((entry) => entry.p === ann).sc > 0""", arg=int(seats["ann"]), timeout=WAIT_MS)

    # Bob reloads his tab mid-match: the page comes back into the same seat of the same room.
    bob = players["bob"]
    await bob.reload()
    await phase(bob, "playing")
    assert await bob.get_attribute("#game", "data-room") == room
    assert await bob.get_attribute("#game", "data-you") == seats["bob"]
    await more_states(bob, 5)

    # A spectator finds the room in the page's list of running rooms and watches it, read-only.
    watcher = await browser.open("watcher", "name=dee&mode=arena")
    await watcher.locator(f'#rooms button.watch[data-room="{room}"]').click(timeout=WAIT_MS)
    await phase(watcher, "spectating")
    assert await watcher.get_attribute("#game", "data-you") in ("", None)
    await more_states(watcher, 10)

    # The match runs out: every player's tab shows the final ranking, then the mode's leaderboard.
    for page in players.values():
        await phase(page, "ended", timeout_ms=MATCH_S * 1000)
        await page.wait_for_function("() => document.querySelectorAll('#ranking li').length === 3", timeout=WAIT_MS)
    # The leaderboard lists the players who scored: Ann, with her hits.
    await players["cyd"].wait_for_function(
        "() => [...document.querySelectorAll('#leaderboard tr')].some((row) => row.textContent.includes('ann'))",
        timeout=WAIT_MS)
    assert not [line for page_lines in browser.console.values() for line in page_lines if "pageerror" in line]


async def play_dice(pages: list[Any]) -> None:
    for page in pages:  # each player rolls with the button when it is theirs to roll
        await page.locator("#roll:enabled").click(timeout=WAIT_MS)
    await pages[0].wait_for_function("() => window.tickroom.match.state.v >= 2", timeout=WAIT_MS)
    await pages[1].wait_for_function("() => document.querySelectorAll('.dice td.die').length === 2",
                                     timeout=WAIT_MS)


async def play_tictactoe(pages: list[Any]) -> None:
    await pages[0].wait_for_function("() => window.tickroom.match.state?.turn != null", timeout=WAIT_MS)
    turns = [await page.evaluate("() => window.tickroom.match.state.turn === window.tickroom.match.you")
             for page in pages]
    mover = pages[turns.index(True)]
    await mover.locator('.cell[data-cell="4"]').click(timeout=WAIT_MS)
    for page in pages:  # both boards show the mark in the middle
        await page.wait_for_function("() => ['X', 'O'].includes(document.querySelector('.cell[data-cell=\"4\"]')"
                                     ".textContent)", timeout=WAIT_MS)


async def play_relay(pages: list[Any]) -> None:
    await pages[0].wait_for_function("() => window.tickroom.match.state?.members?.length === 2", timeout=WAIT_MS)
    await pages[0].fill(".row input", "hello from the playground")
    await pages[0].click("text=send")
    await pages[1].wait_for_function(
        "() => document.querySelector('#game .log').textContent.includes('hello from the playground')",
        timeout=WAIT_MS)


async def play_typing(pages: list[Any]) -> None:
    typist = pages[0]
    await typist.wait_for_function("() => window.tickroom.match.state?.ends_ms != null", timeout=WAIT_MS)
    text = await typist.evaluate("() => window.tickroom.match.welcome.text")
    await typist.click(".race-input")
    await typist.keyboard.type(text[:5], delay=30)
    await pages[1].wait_for_function("""() => window.tickroom.match.state.players
        .some((player) => player.pos === 5)""", timeout=WAIT_MS)


@pytest.mark.parametrize(("mode", "play"), [("dice", play_dice), ("tictactoe", play_tictactoe),
                                            ("relay", play_relay), ("typing", play_typing)])
async def test_each_other_game_is_played_through_its_page(redis_url: str, tabs: Any, mode: str,
                                                          play: Any) -> None:
    app = await start_lobby_app(redis_url, countdown_s=0.5)
    try:
        browser = tabs(app)
        pages = [await browser.open(name, f"name={name}&mode={mode}&autojoin=1") for name in ("ivy", "jon")]
        for page in pages:
            await phase(page, "playing")
        assert len({await page.get_attribute("#game", "data-room") for page in pages}) == 1
        await play(pages)
        for page in pages:
            await more_states(page, 0)
        assert not [line for lines in browser.console.values() for line in lines if "pageerror" in line]
    finally:
        await app.__aexit__(None, None, None)


@pytest.fixture
async def plain_node(redis_url: str) -> AsyncIterator[App]:
    app = await start_lobby_app(redis_url)
    yield app
    await app.__aexit__(None, None, None)


async def test_a_refused_connection_shows_its_error_code_on_the_page(plain_node: App, tabs: Any) -> None:
    browser = tabs(plain_node)
    forged = await browser.open("forged", "token=not.a.token&mode=arena&autojoin=1")
    await phase(forged, "error")
    assert await forged.get_attribute("#error", "data-code") == "token_invalid"
    assert "token_invalid" in await forged.inner_text("#error")
    # A mode the node does not serve is the lobby's refusal, shown the same way.
    unknown = await browser.open("unknown", "name=eve&mode=chess&autojoin=1")
    await phase(unknown, "error")
    assert await unknown.get_attribute("#error", "data-code") == "unknown_mode"


async def test_a_page_of_another_site_is_refused_by_origin_and_learns_why(plain_node: App, tabs: Any) -> None:
    """A page of a site the node does not list (another node's, on another port: another origin) uses the library
    to join: the node refuses the socket `origin_not_allowed`, and the page gets that code, not a bare 1006."""
    other = await start_app()
    try:
        browser = tabs(plain_node)
        browser.base = f"http://127.0.0.1:{other.port}"
        page = await browser.open("other-site", "", path="/healthz")  # not /play/: its CSP allows its node only
        code = await page.evaluate("""async ([url, token]) => {
            const { TickroomClient } = await import("/play/tickroom.js");
            try { await new TickroomClient({ url, token }).join("arena"); return "joined"; }
            catch (error) { return `${error.code} ${error.closeCode}`; }
        }""", [plain_node.url, new_token("fay")])
        assert code == "origin_not_allowed 4403"
    finally:
        await other.__aexit__(None, None, None)


async def test_a_production_node_asks_for_a_token_instead_of_minting_one(tabs: Any) -> None:
    app = await start_app(environment="production", jwt_secret="p" * 40)
    try:
        page = await tabs(app).open("production", "name=gus&mode=arena&autojoin=1")
        await phase(page, "error", "idle")
        assert await page.get_attribute("#error", "data-code") == "not_found"
    finally:
        await app.__aexit__(None, None, None)
