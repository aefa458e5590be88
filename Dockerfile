# One image for every role: `fleet control-plane`, `fleet migrate`, `fleet agent` (and the
# client commands). Build: docker build -t ghcr.io/flyte-fleet/flyte-fleet:TAG .
#
# Stage 1 installs the locked environment (uv.lock) with uv, pinned like the Makefile;
# stage 2 copies only the environment, so neither uv nor the sources ship in the image.
FROM python:3.11-slim AS build

ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN pip install --no-cache-dir --disable-pip-version-check uv==0.13.8

WORKDIR /src
# The dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project \
        --extra control-plane --extra agent --extra flyte
# Then the project itself, installed into the environment (not as a link to /src).
COPY . .
RUN uv sync --frozen --no-dev --no-editable \
        --extra control-plane --extra agent --extra flyte


FROM python:3.11-slim

RUN groupadd --system --gid 10001 fleet \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/fleet --create-home \
        --shell /usr/sbin/nologin fleet
COPY --from=build /app/.venv /app/.venv

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/fleet
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["fleet"]
CMD ["--help"]
