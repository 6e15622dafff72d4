# syntax=docker/dockerfile:1
#
# mini-scan's container image: one stripped binary on Debian slim.
#
#   docker build -t mini-scan:local .
#   docker run --rm mini-scan:local --help
#
# The builder and runtime share a Debian release (bookworm) so the binary's
# glibc matches. The migrations are compiled in (include_str!), so the runtime
# stage needs nothing but the binary and CA certificates.

FROM rust:1-slim-bookworm AS builder
# make builds jemalloc, the ingester's allocator (tikv-jemalloc-sys runs its
# configure and make); the slim image has gcc but not make.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# Dependencies first, in their own layer: build a placeholder crate with the
# real manifest and lock file, so editing src/ does not recompile the
# dependency tree. (aws-lc-sys builds with the image's gcc; no cmake needed.)
# The manifest names its benches explicitly ([[bench]]), and cargo refuses a
# manifest whose targets are missing, so benches/ comes along (it is not built).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. touch makes cargo rebuild our crate rather than trust the
# placeholder's fingerprints.
#
# The release profile keeps line tables for profiling (Cargo.toml), which
# makes the binary about six times its stripped size. The image ships it
# stripped; the symbols and line tables go to a separate file under
# /usr/lib/debug, linked by .gnu_debuglink and the build id, where gdb and
# perf look for them. Get that file with
#   docker build --target debug-symbols --output type=local,dest=symbols .
# tests/it/kubernetes.rs replays these objcopy steps on a test build.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin mini-scan \
    && mkdir -p /usr/lib/debug/usr/local/bin \
    && objcopy --only-keep-debug target/release/mini-scan /usr/lib/debug/usr/local/bin/mini-scan.debug \
    && objcopy --strip-unneeded --add-gnu-debuglink=/usr/lib/debug/usr/local/bin/mini-scan.debug target/release/mini-scan /usr/local/bin/mini-scan

# Not part of the image: `--target debug-symbols` exports the debug file.
FROM scratch AS debug-symbols
COPY --from=builder /usr/lib/debug /usr/lib/debug

FROM debian:bookworm-slim AS runtime
# ca-certificates unpinned on purpose: it should follow the release's updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 miniscan \
    && useradd --system --uid 10001 --gid miniscan --no-create-home --shell /usr/sbin/nologin miniscan
COPY --from=builder /usr/local/bin/mini-scan /usr/local/bin/mini-scan
# Numeric, so runtimes that enforce "run as non-root" can verify it.
USER 10001:10001
# The ingester's /metrics, /healthz and /readyz when MINISCAN_METRICS_ADDR binds it.
EXPOSE 9000
ENTRYPOINT ["mini-scan"]
CMD ["--help"]
