# modelgate: one static-ish binary on a slim Debian base.
#   docker build -t modelgate .
#   docker run -p 8080:8080 -v $PWD/config:/etc/modelgate modelgate
# No system packages needed: pingora's gzip uses the pure-Rust zlib-rs (vendor/README.md).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY proxy ./proxy
COPY vendor ./vendor
COPY benches ./benches
COPY tests ./tests
COPY config ./config
RUN cargo build --release --locked --bin modelgate \
 && strip target/release/modelgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home modelgate
COPY --from=build /src/target/release/modelgate /usr/local/bin/modelgate
COPY config/modelgate.toml /etc/modelgate/modelgate.toml
USER 10001
EXPOSE 8080
# SIGTERM drains: give the container at least shutdown_grace to stop (docker stop -t 35).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/modelgate"]
CMD ["run", "-c", "/etc/modelgate/modelgate.toml"]
