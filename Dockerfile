# syntax=docker/dockerfile:1
# One image for every Tusk process; the command picks the service:
#   python -m services.pfs | services.pps | services.scheduler | services.mountd serve
#   python -m services.scheduler.worker PIPELINE   (the sidecar of a worker pod)
# No bubblewrap: in Kubernetes the pod is the datum's sandbox (docs/kubernetes.md).

FROM python:3.11-slim-bookworm AS build
# pyfuse3 (mountd) builds against libfuse3. Debian package versions are not pinned:
# bookworm's security updates replace them, and pinned versions vanish from the mirrors.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/tusk
ENV PATH=/opt/tusk/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY tusk ./tusk
# The Kubernetes client (scheduler) and FUSE (mountd) are not in the core
# dependencies yet; pinned here the same way pyproject.toml pins the rest.
RUN pip install . "kubernetes-asyncio>=31,<40" "pyfuse3>=3.4,<4"

FROM python:3.11-slim-bookworm
# libfuse3 and fusermount3 for mountd; nothing else beyond the Python base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/tusk tusk
COPY --from=build /opt/tusk /opt/tusk
ENV PATH=/opt/tusk/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TUSK_LISTEN_HOST=0.0.0.0
# Numeric, so Kubernetes can check runAsNonRoot; mountd's manifest runs it as root.
USER 10001
WORKDIR /home/tusk
EXPOSE 7651 7652 7653 7654
CMD ["tusk", "--help"]
