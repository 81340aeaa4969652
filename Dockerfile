# syntax=docker/dockerfile:1.7
# Custos service image: the services of the workspace in /usr/local/bin of a slim Debian runtime,
# run as the unprivileged user 10001: custos-ingest (`run`, `migrate`, `verify`, `keygen`, `jwks`),
# custos-query (report API), custos-consent (`run`, `keygen`), custos-feed (the FHIR audit
# feed), custos-console (the compliance console) and custos-alerts (the detectors). The simulator (custos-sim)
# is in the `tools` target only, built on request; the benchmarks (custos-bench) are never in
# an image.
#
#   docker build -t custos:local .                      (compose.yaml: custos:${CUSTOS_IMAGE_TAG})
#   docker build --target tools -t custos-tools:local . (custos-sim; compose.yaml's simulator)
#   docker build --build-arg CARGO_BUILD_ARGS="-p custos-ingest" -t custos-ingest:local .
#
# Entry point: custos-entrypoint (deploy/docker/file-env.sh) turns FILE__<VAR>=<secret file>
# into <VAR> and execs the command, e.g. `custos-ingest run`.
# Health: no HEALTHCHECK here, since one image serves long-running (`custos-ingest run`) and
# one-shot (`migrate`, `custos-sim`) containers: compose.yaml declares it on the ingest, query,
# consent, feed and console services, calling custos-healthcheck (deploy/docker/healthcheck.sh), a bash /dev/tcp
# probe of /readyz.
# That keeps curl and wget out of the image (less to patch, less for an intruder to use).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder

# rdkafka builds its bundled librdkafka from C sources (configure + make).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make gcc g++ zlib1g-dev perl pkg-config python3 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The context holds only what the build needs (see .dockerignore): manifests, lock file, crates.
COPY . .

# Which binaries to build. Default: the six services, the programs compose.yaml runs from the
# `custos` image.
ARG CARGO_BUILD_ARGS="-p custos-ingest -p custos-query -p custos-consent -p custos-feed -p custos-console -p custos-alerts"
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked ${CARGO_BUILD_ARGS} \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -executable -name 'custos-*' ! -name '*-bench' \
      ! -name 'custos-sim' -exec cp {} /out/ \; \
 && ls -l /out \
 && if [ "${CARGO_BUILD_ARGS}" = "-p custos-ingest -p custos-query -p custos-consent -p custos-feed -p custos-console -p custos-alerts" ]; then \
      for bin in custos-ingest custos-query custos-consent custos-feed custos-console custos-alerts; do \
        test -x "/out/$bin" || { echo "missing binary $bin" >&2; exit 1; }; \
      done; \
    fi

# ---------------------------------------------------------------------------------------------
# The simulator, for the `tools` target only (the default target never builds this stage).
FROM builder AS sim-builder
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p custos-sim --bin custos-sim \
 && mkdir -p /tools \
 && cp target/release/custos-sim /tools/ \
 && test -x /tools/custos-sim

# ---------------------------------------------------------------------------------------------
# The runtime base shared by both targets: no Custos program yet.
FROM ${RUNTIME_IMAGE} AS base

LABEL org.opencontainers.image.title="custos" \
      org.opencontainers.image.description="Custos HIPAA audit pipeline: ingest (Kafka -> ClickHouse), query API, consent service" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates only: TLS to a managed Kafka or ClickHouse. librdkafka is linked statically;
# the HTTP clients (OIDC JWKS, Keycloak, SSF receivers) use rustls with built-in roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 custos \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin custos

COPY --chmod=0755 deploy/docker/file-env.sh /usr/local/bin/custos-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.sh /usr/local/bin/custos-healthcheck

# In a container the HTTP endpoints must listen beyond loopback to be reachable.
ENV CUSTOS_INGEST_HTTP_ADDR=0.0.0.0:9464 \
    CUSTOS_QUERY_HTTP_ADDR=0.0.0.0:8088 \
    CUSTOS_CONSENT_HTTP_ADDR=0.0.0.0:9465 \
    CUSTOS_LOG_FORMAT=json

USER 10001:10001
WORKDIR /tmp
# ingest (/readyz, /metrics), query API, consent service.
EXPOSE 9464 8088 9465

ENTRYPOINT ["custos-entrypoint"]
CMD ["custos-ingest", "run"]

# ---------------------------------------------------------------------------------------------
# `--target tools`: the simulator (sample SMART on FHIR traffic), e.g. compose.yaml's simulator.
FROM base AS tools
LABEL org.opencontainers.image.description="Custos tools: custos-sim, SMART on FHIR traffic for a simulated hospital"
COPY --from=sim-builder /tools/ /usr/local/bin/
CMD ["custos-sim", "--help"]

# ---------------------------------------------------------------------------------------------
# The default target: the services.
FROM base AS runtime
COPY --from=builder /out/ /usr/local/bin/
