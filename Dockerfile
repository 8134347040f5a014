# bora in a container: one image for `bora serve`, `bora worker` and the CLI.
#
#   docker build -t bora .
#
# Stage 1 builds the release binary; stage 2 is a slim Debian with only the
# binary (SQLite is bundled and TLS is rustls, so no system libraries).

FROM rust:1.94-bookworm AS build
WORKDIR /src
# Manifests first, so the dependency build is cached while sources change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/api tests/ops tests/faults tests/ui \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/api/main.rs tests/ops/main.rs tests/faults/main.rs tests/ui/main.rs \
    && cargo build --release --locked --bin bora \
    && rm -rf src
COPY src src
COPY config config
COPY migrations migrations
# The web console's files, embedded into the binary at build time.
COPY ui ui
# Make sure cargo sees the real sources as newer than the stub build.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin bora

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/bora bora \
    && mkdir -p /var/lib/heat-config/hooks
COPY --from=build /src/target/release/bora /usr/local/bin/bora
USER bora
WORKDIR /var/lib/bora
EXPOSE 8080
ENTRYPOINT ["bora"]
CMD ["serve"]
