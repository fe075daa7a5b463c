# Images of the whole system, built from this repository (the context is the
# repository root; .dockerignore leaves out target/ and test output):
#
#   docker build --target tools -t neon-local/tools .   # S3 server (moto), auth-setup, setup, static control plane
#   docker build -t neon-local/neon .                    # every binary + PostgreSQL 15
#
# `neon` holds every binary of the workspace (pageserver, safekeeper,
# storage_broker, compute_ctl, proxy, neon_local, pg_wal_inspect,
# walproposer, pagebench) in /usr/local/bin and Debian's PostgreSQL 15; it
# runs any daemon and the compute (compute_ctl, which starts postgres as
# the `postgres` user). docker-compose/ runs a cluster of them.
#
# The images start FROM two local tags that docker-compose/make-base-image.sh
# makes without a registry (Debian by debootstrap, and the same plus this
# machine's Rust toolchain); with a registry, retag debian:bookworm and
# rust:1-bookworm, or pass --build-arg BASE_IMAGE=... RUST_IMAGE=....
#
# Written for the classic builder as well as BuildKit (no RUN --mount: the
# classic builder is all some Docker installations have). Rebuilds stay fast
# through layers instead: the dependencies are compiled in a layer of their
# own from a skeleton of the workspace's manifests
# (docker-compose/cargo-skeleton.sh), which Docker reuses until a
# Cargo.toml or Cargo.lock changes.
#
# CARGO_PROFILE: `dev` by default (dependencies optimised as the workspace's
# [profile.dev] says, no debug info: the quickest full build), `release`
# for production images.

ARG BASE_IMAGE=neon-local/debian:bookworm
ARG RUST_IMAGE=neon-local/rust:bookworm

# ---------------------------------------------------------------------------
# tools: Python with moto's S3 server and the compose cluster's helpers
# (keys, tokens and certificates with PyJWT and cryptography). First
# in the file so that `--target tools` does not compile any Rust with the
# classic builder (which builds every stage up to its target).
FROM ${BASE_IMAGE} AS tools
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates curl postgresql-client-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
# PIP_CERT: the system CA bundle (which has the machine's own CAs, see
# make-base-image.sh) rather than pip's bundled one.
RUN python3 -m venv /opt/venv \
 && PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install --quiet \
      --disable-pip-version-check --no-cache-dir 'moto[server]==5.2.5' 'boto3' 'requests' \
      'PyJWT[crypto]>=2.8'
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1
COPY docker-compose/tools/ /usr/local/lib/neon-tools/
LABEL org.neon-local.image=tools
CMD ["python3", "/usr/local/lib/neon-tools/s3_server.py"]

# ---------------------------------------------------------------------------
# planner: the workspace's manifests with stub sources.
FROM ${BASE_IMAGE} AS planner
WORKDIR /src
COPY . .
RUN bash docker-compose/cargo-skeleton.sh /skeleton
LABEL org.neon-local.image=planner

# ---------------------------------------------------------------------------
# builder: every binary of the workspace.
FROM ${RUST_IMAGE} AS builder
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      build-essential pkg-config protobuf-compiler ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ARG CARGO_PROFILE=dev
# No debug info, no incremental compilation (a layer is built once).
ENV CARGO_PROFILE_DEV_DEBUG=false \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never \
    CARGO_TERM_PROGRESS_WHEN=never
WORKDIR /src
# 1. Dependencies only: reused until a manifest changes.
COPY --from=planner /skeleton/ ./
RUN cargo build --locked --profile "$CARGO_PROFILE" --bins
# 2. The workspace itself: only what cargo reads, so that a change to the
#    compose files or scripts rebuilds nothing (docs/openapi/: the API
#    documents the daemons serve). The sources are touched so
#    that cargo rebuilds every workspace crate over its stub, whatever their
#    timestamps. (A new top-level crate directory must be added here.)
COPY Cargo.toml Cargo.lock ./
COPY .cargo/ ./.cargo/
COPY libs/ ./libs/
COPY pageserver/ ./pageserver/
COPY safekeeper/ ./safekeeper/
COPY storage_broker/ ./storage_broker/
COPY compute_ctl/ ./compute_ctl/
COPY proxy/ ./proxy/
COPY control_plane/ ./control_plane/
COPY docs/openapi/ ./docs/openapi/
RUN find . -path ./target -prune -o -name '*.rs' -type f -exec touch {} + \
 && cargo build --locked --profile "$CARGO_PROFILE" --bins \
 && dir=$([ "$CARGO_PROFILE" = dev ] && echo debug || echo "$CARGO_PROFILE") \
 && mkdir /out \
 && find "target/$dir" -maxdepth 1 -type f -executable -exec cp {} /out/ \; \
 && ls /out
# The label lets old builds be pruned (`docker image prune --filter
# label=org.neon-local.image`) without touching the dependency layer, which
# the current build, when tagged (`--target builder -t ...`), still uses.
LABEL org.neon-local.image=builder

# ---------------------------------------------------------------------------
# neon: every daemon and the compute.
FROM ${BASE_IMAGE} AS neon
# No default cluster from the postgresql package: computes and the
# pageserver's initdb make their own data directories.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main-cluster.conf \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      postgresql-15 postgresql-client-15 ca-certificates curl util-linux >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/bin:/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    PG_BIN=/usr/lib/postgresql/15/bin
COPY --from=builder /out/ /usr/local/bin/
LABEL org.neon-local.image=neon
# Daemons run as root and start PostgreSQL programs as `postgres` (made by
# the package); their data lives in volumes under /data.
WORKDIR /data
CMD ["bash"]
