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
# The image holds no usable credential: the example file is reference only, and the daemon
# reads /etc/rebilly-webhookd/config.toml, which you mount. Listening on 0.0.0.0, it refuses to
# start with the example's change-me secrets or a short api.token, naming the key.
COPY config.example.toml /etc/rebilly-webhookd/config.example.toml
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
# The daemon finishes in-flight work within server.shutdown_grace_seconds (25 by default); stop
# the container with a longer timeout, such as `docker stop --time 30`.
ENTRYPOINT ["rebilly-webhookd"]
CMD ["serve", "--config", "/etc/rebilly-webhookd/config.toml"]
