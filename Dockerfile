# syntax=docker/dockerfile:1
# Tributary: one image with both binaries (worker, coordinator).
#   docker build -t tributary .
# Build stage: the pinned toolchain; release profile (thin LTO). The embedded SQLite warehouse
# stays out of the fleet image (--no-default-features): fleets load Redshift or PostgreSQL.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p worker --bin worker \
 && cargo build --release --locked -p coordinator --no-default-features --bin coordinator \
 && mkdir -p /out \
 && cp target/release/worker target/release/coordinator /out/

# Runtime: distroless with glibc and CA certificates, no shell, no package manager, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/worker /out/coordinator /usr/local/bin/
USER 65532:65532
EXPOSE 8080 8081
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/worker"]
