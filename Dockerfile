# syntax=docker/dockerfile:1
# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer, so that code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin rebilly-webhookd \
    && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin rebilly-webhookd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/rebilly-webhookd webhookd \
    && mkdir -p /var/lib/rebilly-webhookd /etc/rebilly-webhookd \
    && chown webhookd:webhookd /var/lib/rebilly-webhookd
COPY --from=build /src/target/release/rebilly-webhookd /usr/local/bin/rebilly-webhookd
# The example configuration; mount your own over it (it holds example credentials only).
COPY config.example.toml /etc/rebilly-webhookd/config.toml
ENV REBILLY_WEBHOOKD__SERVER__LISTEN=0.0.0.0:8080 \
    REBILLY_WEBHOOKD__STORAGE__PATH=/var/lib/rebilly-webhookd/rebilly-webhookd.db \
    REBILLY_WEBHOOKD__LOG__FORMAT=json \
    MALLOC_ARENA_MAX=2
VOLUME ["/var/lib/rebilly-webhookd"]
USER webhookd
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["rebilly-webhookd", "healthcheck", "--ready", "--config", "/etc/rebilly-webhookd/config.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["rebilly-webhookd"]
CMD ["serve", "--config", "/etc/rebilly-webhookd/config.toml"]
