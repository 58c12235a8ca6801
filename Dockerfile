# syntax=docker/dockerfile:1.7
# The orgkeeper image: one binary (controller, sidecar, fact store, CLI) on a distroless base that
# runs as a non-root user. Build: docker build -t orgkeeper:0.1.0 .
# BuildKit cache mounts keep the cargo registry and target dir between builds, so a code change rebuilds only
# the orgkeeper crate.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The whole (filtered, see .dockerignore) source tree, so that every target Cargo.toml declares is present;
# the cache mounts below make the build incremental anyway.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin orgkeeper \
    && install -D -m 0755 target/release/orgkeeper /out/orgkeeper

# glibc, libgcc and CA certificates, no shell or package manager; uid/gid 65532 ("nonroot"). Debian 12 like the
# builder, so the binary finds the glibc it was linked against. SQLite is compiled in; TLS is rustls.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/orgkeeper /usr/local/bin/orgkeeper
USER 65532:65532
# Controller metrics; sidecar API and metrics; fact store API and metrics (see the chart for the defaults).
EXPOSE 9090 8080 9091 8081 9092
ENTRYPOINT ["/usr/local/bin/orgkeeper"]
CMD ["--help"]
