# Carewatch worker image: multi-stage, slim, non-root. Build: docker build -t carewatch .
FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/carewatch
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY templates ./templates
RUN /opt/carewatch/bin/pip install --no-cache-dir ".[postgres,google]"

FROM python:3.12-slim-bookworm
LABEL org.opencontainers.image.title="carewatch" \
      org.opencontainers.image.description="Watches a firm's shared mailboxes and tells owners when client care lapses"
RUN groupadd --system --gid 10001 carewatch \
 && useradd --system --uid 10001 --gid carewatch --home-dir /data --shell /usr/sbin/nologin carewatch \
 && mkdir -p /data /config \
 && chown carewatch:carewatch /data
COPY --from=build /opt/carewatch /opt/carewatch
# Mount your own config read-only over this example: -v ./carewatch.toml:/config/carewatch.toml:ro
COPY config/carewatch.example.toml config/clients.example.csv /config/
ENV PATH=/opt/carewatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CAREWATCH_CONFIG=/config/carewatch.toml \
    CAREWATCH__STORE__URL="\"sqlite:////data/carewatch.db\"" \
    CAREWATCH__NOTIFY__DIR="\"/data/outbox\""
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status != 200)"]
# The first SIGTERM finishes the batch in hand; give it time (docker stop -t 30, or stop_grace_period).
STOPSIGNAL SIGTERM
# `docker run IMAGE` runs the worker; `docker run IMAGE validate --connect` (or any other
# command) runs that command instead.
ENTRYPOINT ["carewatch"]
CMD ["run"]
