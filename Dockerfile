# The OET device server image: `ObservationExecutionTool <instance>` under tini, as user oet.
#
#   docker build -t ska-oso-oet:0.1.0 .
#   docker run --rm --network host -e TANGO_HOST=localhost:10000 ska-oso-oet:0.1.0      # instance 1
#   docker run --rm --network host -e TANGO_HOST=localhost:10000 \
#       -e OET_DEVICE=oet/executor/2 ska-oso-oet:0.1.0 2                                   # instance 2
#
# The device must already be registered in the Tango database (tango-db/oet.json with @REPO@
# replaced by /app, e.g. by the chart's dsconfig job). See docs/deployment.md.
FROM python:3.11-slim

# git: git:// scripts are cloned with it; procps: pgrep, with which GitPython finds the helpers
# of a git that overran GitTimeout to kill them too. tini: PID 1 that forwards SIGTERM to the
# server and reaps orphaned grandchildren of the script workers.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git procps tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 oet \
    && useradd --uid 1000 --gid 1000 --home-dir /var/lib/oet --create-home \
        --shell /usr/sbin/nologin oet

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The project without its test/lint extras; uv makes environments for git scripts faster
# (without it the OET falls back to pip).
COPY setup.cfg pyproject.toml README.md /tmp/oet-src/
COPY src /tmp/oet-src/src
RUN pip install /tmp/oet-src uv && rm -rf /tmp/oet-src

# /app is what tango-db/oet.json calls @REPO@: the example scripts, the abort script and the
# device configuration. Owned by root, so the server cannot change its own scripts.
WORKDIR /app
COPY scripts /app/scripts
COPY tango-db /app/tango-db

# HOME holds the caches: git clones and script environments (~/.cache/ska-oso-oet, the
# device's default cache directory), and uv's and pip's download caches. A volume in
# production, so that clones and environments survive a restart.
# OET_DATA_DIR holds what must last: each device's history (history.sqlite) and the output
# of its procedures. A volume of its own: back it up; the caches can be rebuilt, it cannot.
RUN mkdir -p /var/lib/oet/.cache/ska-oso-oet /var/lib/oet/data && chown -R 1000:1000 /var/lib/oet
ENV HOME=/var/lib/oet \
    OET_DATA_DIR=/var/lib/oet/data \
    OET_DEVICE=oet/executor/1
VOLUME ["/var/lib/oet/.cache", "/var/lib/oet/data"]

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 1000:1000

# The REST API beside the device, when asked for: -e OET_REST_PORT=5000 -e OET_REST_HOST=0.0.0.0
# (off by default; OET_REST_HOST=0.0.0.0 makes it reachable through the published port).
EXPOSE 5000

# Healthy while the device answers a ping through the Tango database at TANGO_HOST.
# OET_DEVICE must name the device of the instance this container serves.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, tango; tango.DeviceProxy(os.environ.get('OET_DEVICE', 'oet/executor/1')).ping()"]

ENTRYPOINT ["tini", "--", "ObservationExecutionTool"]
CMD ["1"]
