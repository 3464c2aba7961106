# One Dockerfile, one base, three targets (docker-compose.yml builds them; docs/DEPLOY.md):
#   server  the SRTC server and the SR worker (python -m server, python -m server.worker); the last stage, so
#           `docker build .` builds it
#   janus   Debian's Janus (VideoRoom), configured from deploy/janus
#   coturn  Debian's coturn, configured from deploy/turnserver.conf
#
# The base: python:3.11-slim-bookworm is Debian bookworm with Python 3.11 and pip, so one pulled image serves
# every target: the server's Python packages from pip, Janus 1.1.2 (the version deploy/janus and the tests are
# written for) and coturn from bookworm's apt. Named by its Debian release because python:3.11-slim follows
# Debian's newest. Any Debian bookworm image works as BASE (docker-compose build --build-arg BASE=...), with or
# without Python: the base stage installs Debian's python3 where the image has none.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS base
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# Starts each service from the configuration mounted at /srtc/deploy (deploy/docker/start.sh).
COPY deploy/docker/start.sh /usr/local/bin/srtc-start
RUN chmod 755 /usr/local/bin/srtc-start

FROM base AS janus
RUN apt-get update && apt-get install -y --no-install-recommends janus && rm -rf /var/lib/apt/lists/*
CMD ["srtc-start", "janus"]

FROM base AS coturn
RUN apt-get update && apt-get install -y --no-install-recommends coturn && rm -rf /var/lib/apt/lists/*
CMD ["srtc-start", "coturn"]

FROM base AS server
WORKDIR /app
RUN python3 -m venv /opt/srtc
ENV PATH=/opt/srtc/bin:$PATH
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
EXPOSE 8080
# aiortc needs UDP ports reachable from the browser: run with host networking (see docker-compose.yml), which
# also makes the loopback default reachable from this host only.
CMD ["python", "-m", "server", "--host", "127.0.0.1", "--port", "8080"]
