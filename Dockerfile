# Carewatch worker image: multi-stage, slim, non-root. Build: docker build -t carewatch .
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv module, for machines that
# reach no registry (scripts/container-check builds on one made from Debian's packages).
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/carewatch
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY templates ./templates
RUN /opt/carewatch/bin/pip install --no-cache-dir ".[postgres,google]"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="carewatch" \
      org.opencontainers.image.description="Watches a firm's shared mailboxes and tells owners when client care lapses"
RUN groupadd --system --gid 10001 carewatch \
 && useradd --system --uid 10001 --gid carewatch --home-dir /data --shell /usr/sbin/nologin carewatch \
 && mkdir -p /data /config \
 && chown carewatch:carewatch /data
COPY --from=build /opt/carewatch /opt/carewatch
# For reference only: mount your own config read-only at /config/carewatch.toml (README, Deploy).
COPY config/carewatch.example.toml /config/
ENV PATH=/opt/carewatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAREWATCH_CONFIG=/config/carewatch.toml \
    CAREWATCH__STORE__URL=sqlite:////data/carewatch.db \
    CAREWATCH__NOTIFY__DIR=/data/outbox
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9108
# /healthz on the port the config names (service.metrics_port or CAREWATCH__SERVICE__METRICS_PORT).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-m", "worker.service.healthcheck"]
# The first SIGTERM finishes the batch in hand; give it time (docker stop -t 30, or stop_grace_period).
STOPSIGNAL SIGTERM
# `docker run IMAGE` runs the worker; `docker run IMAGE validate --connect` (or any other
# command) runs that command instead.
ENTRYPOINT ["carewatch"]
CMD ["run"]
