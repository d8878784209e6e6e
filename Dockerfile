# syntax=docker/dockerfile:1
# A Tickroom node with its runtime dependencies only: Redis and Postgres run elsewhere (docker-compose.yml),
# and REDIS_URL, DATABASE_URL, TICKROOM_JWT_SECRET (32 characters or more) must be set. docs/operations.md.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
RUN python -m venv /opt/tickroom
WORKDIR /src
# Dependencies first, from the lock (requirements/image.txt, exported from uv.lock: exact versions, every file's
# hash), so that a code change does not reinstall them and a new release of anything changes nothing. The `bot`
# extra (picows) is in so that `tickroom bot` works inside the image; the `embedded` and `dev` extras are not.
COPY requirements/image.txt /tmp/requirements.txt
RUN /opt/tickroom/bin/pip install --require-hashes --no-deps -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY server ./server
COPY game ./game
COPY lobby ./lobby
COPY persistence ./persistence
COPY bot ./bot
# server/http/play/tickroom.js links to the JavaScript library: the wheel built below holds a copy of it.
COPY clients/js/tickroom.js ./clients/js/tickroom.js
RUN /opt/tickroom/bin/pip install --no-deps --no-build-isolation . && /opt/tickroom/bin/pip uninstall -y pip setuptools

FROM python:3.11-slim
RUN groupadd --system --gid 10001 tickroom \
    && useradd --system --uid 10001 --gid tickroom --home-dir /home/tickroom --create-home \
        --shell /usr/sbin/nologin tickroom
COPY --from=build /opt/tickroom /opt/tickroom
# Production by default: the node refuses the development JWT secret and short ones (TICKROOM_ENV=development
# relaxes that). It listens on every interface of the container; publish the port, or put nginx in front.
ENV PATH=/opt/tickroom/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    TICKROOM_ENV=production TICKROOM_HOST=0.0.0.0 TICKROOM_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/tickroom
EXPOSE 8000
# Alive: the process answers HTTP. Readiness (Redis, Postgres, migrations, not draining) is /readyz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TICKROOM_PORT', '8000'), timeout=4)"]
# Exec form: tickroom is PID 1 and gets SIGTERM itself (it snapshots its rooms and tells players to reconnect).
ENTRYPOINT ["tickroom"]
CMD ["serve"]
