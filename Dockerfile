# The sidecar image: python:3.11-slim, the package and its runtime dependencies
# only, a non-root user, and the shipped routes.yaml validated at build time.
#
#   docker build -t sidecar .
#   docker run --rm -p 8080:8080 -p 9100:9100 \
#     -e EDGE_SECRET -e UPSTREAM_URL=http://backend:8000 sidecar
#
# Configuration comes from the environment: the variables 'sidecar serve --help' lists
# (tests/test_deploy.py keeps this list equal to it), the shipped routes.yaml's
#   PORT DRAIN_TIMEOUT TRUSTED_PROXIES CLIENT_IP_HEADER METRICS_PORT LOG_LEVEL LOG_FORMAT
#   REDIS_URL UPSTREAM_URL EDGE_SECRET EDGE_SECRET_PREVIOUS
# then the process's own
#   SIDECAR_ALLOW_PURE_PYTHON AIOHTTP_NO_EXTENSIONS RAILWAY_ENVIRONMENT_ID
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package only: no tests, no dev extras ("[test]" is never installed).
# routes.yaml too: sidecar/routes.yaml links to it, and the wheel carries its contents
# (what 'sidecar demo' falls back to outside /app).
# Every package at the version requirements.lock pins (scripts/lock refreshes it), pip and
# the build backend included, so a rebuild installs what CI tested.
WORKDIR /src
COPY pyproject.toml README.md routes.yaml requirements.lock ./
COPY sidecar/ ./sidecar/
RUN pip install --no-cache-dir --upgrade -c requirements.lock pip setuptools \
    && pip install --no-cache-dir --no-build-isolation -c requirements.lock /src \
    && rm -rf /src
# aiohttp must run on its C parsers ('serve' refuses otherwise): fail the build, not the deploy.
RUN python -c "from sidecar.extensions import pure_python_parts as p, refusal; import sys; sys.exit(refusal(p()) if p() else 0)"

# A fixed, unprivileged uid/gid so volume and Kubernetes securityContext rules can name it.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --no-create-home --shell /usr/sbin/nologin sidecar

WORKDIR /app
COPY routes.yaml /app/routes.yaml

# Numeric, so a runtime (Kubernetes runAsNonRoot) can verify it is not root.
USER 10001:10001

# Secrets are absent at build time: 'check' only warns about unset variables
# (EDGE_SECRET), and still fails the build on any real error in the file.
RUN sidecar check /app/routes.yaml

# 8080: the proxy (PORT); 9100: Prometheus /metrics (METRICS_PORT).
EXPOSE 8080 9100

# Exec form, no shell in between: SIGTERM from 'docker stop' or a Railway redeploy
# reaches the sidecar itself, which drains: every WebSocket session gets 1012, spread
# over DRAIN_TIMEOUT, before it exits. HEALTHCHECK is left to the platform (/readyz).
ENTRYPOINT ["sidecar"]
CMD ["serve", "--config", "/app/routes.yaml"]
