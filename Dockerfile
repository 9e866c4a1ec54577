# syntax=docker/dockerfile:1
# Tributary: one image with both binaries (worker, coordinator).
#
#   docker build -t tributary .                      # where registries are reachable: builds from source
#   scripts/build-image                              # here: no pull; host-built binaries, local base
#
# BINARIES selects where the binaries come from: `from-source` (default) compiles them in the
# pinned Rust image; `prebuilt` copies `dist/worker` and `dist/coordinator` from the build context
# (scripts/build-image builds them on the host). Unused stages are skipped by BuildKit and by
# buildah, so the prebuilt path never needs the Rust image. The coordinator keeps the embedded
# SQLite warehouse, so `coordinator demo` runs in the image too.
ARG BINARIES=from-source

FROM rust:1.95-bookworm AS from-source
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p worker --bin worker -p coordinator --bin coordinator \
      --features worker/aws,coordinator/aws \
 && mkdir -p /out \
 && cp target/dist/worker target/dist/coordinator /out/

FROM scratch AS prebuilt
COPY dist/worker dist/coordinator /out/

# The stage named by BINARIES (a local stage, not a registry image, so it has no tag to pin).
# checkov:skip=CKV_DOCKER_7: ${BINARIES} names a stage of this file, not a registry image
# hadolint ignore=DL3006
FROM ${BINARIES} AS binaries

# Runtime: distroless with glibc and CA certificates, no shell, no package manager, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=binaries /out/worker /out/coordinator /usr/local/bin/
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
WORKDIR /home/nonroot
EXPOSE 8080 8081
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/worker"]
