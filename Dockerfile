# modelgate: a release build on the Rust image, run as a non-root user on slim Debian.
#
#   docker build -t modelgate:local .
#   docker run --rm -p 8080:8080 --network models modelgate:local
#
# The image's config is config/container.toml (/etc/modelgate/modelgate.toml): HTTP on
# 0.0.0.0:8080, replicas found by the name `model` on the container network, admin on
# loopback. Mount your own config's directory over /etc/modelgate (-v $PWD/gate:/etc/modelgate:ro
# with gate/modelgate.toml in it; a single-file mount keeps the old file after an edit).
# The same image serves as a demo model replica:
#   docker run --rm modelgate:local demo --replica-only --listen 0.0.0.0:8000

FROM rust:1-bookworm AS build
WORKDIR /src
# pingora-core is vendored with a pure-Rust zlib (vendor/README.md): no cmake, only the
# C compiler and make the Rust image already has (for jemalloc). .cargo/config.toml
# holds the allocator options compiled into the binary, the same as in every other
# build. The benches and tests are copied because the manifest names them.
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY .cargo ./.cargo
COPY vendor ./vendor
COPY proxy ./proxy
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin modelgate \
 && strip -o /modelgate target/release/modelgate

FROM debian:bookworm-slim
# ca-certificates: upstreams with protocol = "https" and no `ca` are verified against them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin modelgate
COPY --from=build /modelgate /usr/local/bin/modelgate
COPY config/container.toml /etc/modelgate/modelgate.toml
USER 10001:10001
# Every listener of config/container.toml: HTTP, and admin (loopback inside the image;
# published only with a config that binds it elsewhere and sets admin_token_file).
EXPOSE 8080 9901
# SIGTERM drains: /readyz turns 503, listeners close, running requests get
# listen.shutdown_grace (7s in container.toml) and the process exits as soon as the last
# one is done, inside docker stop's default 10 s. A longer grace needs `docker stop -t`
# / `stop_grace_period` / `terminationGracePeriodSeconds` above it. SIGTERM is pingora's
# graceful stop (nginx's would be SIGQUIT, which here means a graceful upgrade); SIGINT
# (Ctrl+C under `docker run -it`) stops at once. README: Signals.
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the same image runs the demo replica, which has no admin listener,
# so no one check fits both. Compose and Kubernetes check each service themselves
# (`modelgate probe URL`: /readyz on the admin listener, /health on a replica).
ENTRYPOINT ["/usr/local/bin/modelgate"]
CMD ["run", "-c", "/etc/modelgate/modelgate.toml"]
