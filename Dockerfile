# One image for the three services; the command picks the binary:
#   podman run IMAGE                            push-gateway (the default)
#   podman run IMAGE /usr/local/bin/presence-svc
#   podman run IMAGE /usr/local/bin/profile-svc
# Every setting is an environment variable (docs/OPERATIONS.md). The image runs as the
# non-root user 65532, needs no writable filesystem and no shell.
#
# Builds anywhere with the upstream images. On a machine that cannot pull (this
# project's CI), scripts/seed-images.sh makes local images under the same names.
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The target directory is a build cache: a rebuild recompiles only what changed.
# Debug info stripped (symbol names kept for backtraces): 3 x ~65 MB become ~3 x 15 MB.
RUN --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p presence-svc -p profile-svc -p push-gateway \
 && mkdir -p /out \
 && cp target/release/presence-svc target/release/profile-svc target/release/push-gateway /out/

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# gRPC: gateway, presence, profile; Prometheus metrics (with METRICS_LISTEN).
EXPOSE 50051 50061 50062 9090
ENTRYPOINT []
CMD ["/usr/local/bin/push-gateway"]
