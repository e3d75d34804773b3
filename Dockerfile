# agentic-fast: the call server in a container (docs/deploy.md).
#
#   docker build -t agentic-fast .
#   docker run --env-file agentic-fast.env -p 127.0.0.1:8080:8080 \
#       -v "$PWD/config.yaml:/etc/agentic-fast/config.yaml:ro" \
#       -v agentic-fast-state:/var/lib/agentic-fast agentic-fast
#
# Stage 1 builds the native audio extension (Cython, ext/_audio.pyx) into the project's wheel
# (AGENTIC_FAST_REQUIRE_EXT=1: a failed build of the extension fails the image instead of
# shipping the slower pure-Python audio path) and installs it with its dependencies into a
# virtual environment. Stage 2 copies that environment (no compiler, no build tools) and runs
# as an unprivileged user. Works with BuildKit and with the classic builder.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV AGENTIC_FAST_REQUIRE_EXT=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY pyproject.toml setup.py README.md ./
COPY ext ./ext
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/agentic-fast \
    && /opt/agentic-fast/bin/pip install /wheels/agentic_fast-*.whl

FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=10001
ENV PATH=/opt/agentic-fast/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/agentic-fast /opt/agentic-fast
RUN groupadd --system --gid "${APP_UID}" agentic \
    && useradd --system --uid "${APP_UID}" --gid agentic --no-create-home \
        --home-dir /var/lib/agentic-fast --shell /usr/sbin/nologin agentic \
    && install -d -o agentic -g agentic -m 0700 /var/lib/agentic-fast \
    && install -d -m 0755 /etc/agentic-fast
# The default configuration reads everything from the environment (see config.yaml);
# mount your own over it read-only.
COPY config.yaml /etc/agentic-fast/config.yaml
# HOME is the state volume too: gateway.device_key_path (~/.agentic_fast/...) and the device
# token the OpenClaw gateway issues after pairing survive a new container.
ENV AGENTIC_FAST_CONFIG=/etc/agentic-fast/config.yaml \
    AGENTIC_FAST_HOST=0.0.0.0 \
    AGENTIC_FAST_PORT=8080 \
    AGENTIC_FAST_STATE_DIR=/var/lib/agentic-fast \
    AGENTIC_FAST_REQUIRE_EXT=1 \
    HOME=/var/lib/agentic-fast
# The image is only good with the native hot path: prove it loaded.
RUN python -c "import agentic_fast.audio as a; assert a.IMPLEMENTATION == 'native', a.IMPLEMENTATION"
USER agentic
WORKDIR /var/lib/agentic-fast
VOLUME ["/var/lib/agentic-fast"]
EXPOSE 8080
# No curl in a slim image: the standard library asks /healthz (a non-2xx or no answer exits 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AGENTIC_FAST_PORT', '8080'), timeout=4)"]
# SIGTERM starts the graceful drain (server.drain_timeout_s); give `docker stop` / compose's
# stop_grace_period more than that, or calls in progress are cut.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentic-fast"]
CMD ["serve"]
