# syntax=docker/dockerfile:1
# One image for every rollguard service; pick the service with the command:
#   docker run --rm -e ROLLGUARD_KAFKA_BOOTSTRAP=kafka:9092 rollguard run detector
FROM python:3.11-slim

# FAUST_DATADIR: the decider's faust app keeps its data directory under the state dir
# instead of under the root-owned working directory.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ROLLGUARD_STATE_DIR=/var/lib/rollguard \
    FAUST_DATADIR=/var/lib/rollguard/faust

# Fixed numeric ids so Kubernetes' runAsNonRoot can check them.
RUN groupadd --system --gid 10001 rollguard \
 && useradd --system --uid 10001 --gid rollguard --home-dir /var/lib/rollguard \
        --no-create-home --shell /usr/sbin/nologin rollguard \
 && mkdir -p /var/lib/rollguard /keys \
 && chown rollguard:rollguard /var/lib/rollguard /keys

WORKDIR /app

COPY pyproject.toml setup.py README.md ./
COPY rollguard/ rollguard/
COPY services/ services/
COPY shell/ shell/
COPY policies/ policies/
COPY schemas/ schemas/

# The default policy is read from ./policies/default.yaml, hence WORKDIR /app at run time.
RUN pip install '.[postgres]' \
 && rm -rf build ./*.egg-info

USER rollguard:rollguard

ENTRYPOINT ["rollguard"]
CMD ["--help"]
