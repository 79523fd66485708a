# syntax=docker/dockerfile:1

# signal-scans: a production-profile build of the `signal-scans` binary on a distroless, non-root runtime.
# Dependencies are compiled in their own layer (cargo-chef), so a change to src/ rebuilds only the crate.
#
#   docker build -t signal-scans .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=postgres://... signal-scans
#   docker run --rm -p 8080:8080 -v signal-scans-data:/home/nonroot/data signal-scans   (embedded SQLite)

# bookworm's glibc (2.36) is the one distroless cc-debian12 ships, so the dynamic binary runs there.
FROM rust:1.95-bookworm AS chef
# cargo-chef from crates.io at a pinned version: reproducible, and no second base image to track.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# The production profile (Cargo.toml: release with fat LTO and one codegen unit), as bench/ measures it.
RUN cargo chef cook --profile production --locked --bin signal-scans --recipe-path recipe.json
# The whole context (.dockerignore trims it): src/store/migrations.rs embeds migrations/ at compile time.
COPY . .
# data/ is where the embedded SQLite store lives when DATABASE_URL is unset, bootstrap/ where compose's
# bootstrap writes the first key; made here because the runtime image has no shell, and owned by
# nonroot so a volume mounted on either is writable.
RUN cargo build --profile production --locked --bin signal-scans \
    && mkdir -p /out/data /out/bootstrap

# cc = glibc + libgcc + CA certificates, no shell, no package manager; nonroot = uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /app/target/production/signal-scans /usr/local/bin/signal-scans
COPY --from=builder --chown=65532:65532 /out/data /home/nonroot/data
COPY --from=builder --chown=65532:65532 /out/bootstrap /bootstrap
# Without DATABASE_URL the store is sqlite://data/signal-scans.db, relative to here: mount a volume
# on /home/nonroot/data to keep it. With a postgres:// URL nothing is written to disk.
WORKDIR /home/nonroot
USER 65532:65532
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
# Exec form: the image has no shell. The subcommand GETs /healthz on LISTEN_ADDR (0.0.0.0 → 127.0.0.1)
# and exits 0 on a 200; it gives up after 3 s, inside --timeout.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/signal-scans", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/signal-scans"]
CMD ["serve"]
