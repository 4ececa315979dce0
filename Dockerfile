# syntax=docker/dockerfile:1

# The Strata image: `docker build -t strata .` at the repository root.
# Tags, not digests, so that the file stays readable; pin both images by digest
# (`FROM image@sha256:…`) where builds must be reproducible.

# bookworm, because the runtime image is Debian 12: the binary links glibc dynamically and
# must not need a newer glibc than the one it runs on.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The target dir is a cache mount, so it does not end up in a layer; the binary is copied out
# of it in the same step. --locked: the image gets the versions in Cargo.lock, or no image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p strata \
 && install -D -m 0755 target/release/strata /out/strata \
 && mkdir -p /out/data

# distroless cc: glibc, libgcc_s and CA certificates (rustls-native-certs reads them for
# webhook deliveries), nothing else — no shell, no package manager. The binary needs no other
# shared library: TLS is rustls, SQLite is bundled (see `ldd target/release/strata`).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/strata /usr/local/bin/strata
# The default SQLite database needs a writable directory, and distroless has no mkdir: the
# directory comes from the build stage, owned by nonroot. Mount a volume here to keep it.
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
ENV STRATA_LISTEN=0.0.0.0:8080 \
    STRATA_LOG_FORMAT=json \
    STRATA_DATABASE_URL=sqlite:///data/strata.db
EXPOSE 8080
# No HEALTHCHECK: there is no shell or curl in this image to run one, and the binary has no
# probe subcommand. Orchestrators probe GET /healthz and /readyz over HTTP instead
# (deploy/kubernetes); compose cannot, so deploy/compose.yaml orders on the migration job.
ENTRYPOINT ["/usr/local/bin/strata"]
CMD ["serve"]
