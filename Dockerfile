# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a
# non-root user. (No Docker engine runs on the development machines, so this
# file is built by the deployment pipeline, not by CI here.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Builds for x86-64-v3 (see .cargo/config.toml; RUSTFLAGS overrides it for older CPUs).
COPY .cargo ./.cargo
COPY src ./src
COPY migrations ./migrations
COPY loadtest ./loadtest
COPY benches ./benches
RUN cargo build --release --locked --bin edge

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/edge edge
COPY --from=build /src/target/release/edge /usr/local/bin/edge
USER edge
WORKDIR /var/lib/edge
ENV EDGE_LISTEN=0.0.0.0:8080 \
    EDGE_ADMIN_LISTEN=0.0.0.0:9090 \
    EDGE_SPOOL_DIR=/var/lib/edge/spool
VOLUME ["/var/lib/edge"]
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/edge"]
CMD ["serve"]
