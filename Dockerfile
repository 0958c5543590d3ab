# syntax=docker/dockerfile:1
# Dakota Content Service: the gRPC server `dakota-server` and the CLI `dakota` (used by the
# HEALTHCHECK), the prompts and the sample knowledge base, on distroless (glibc, CA certificates,
# no shell), as a non-root user.
#
#   docker build -t dakota-content-service .
#   docker run --rm -p 50051:50051 -p 8000:8000 dakota-content-service
#
# No Docker engine runs on the development machines: this file is linted (`hadolint Dockerfile`,
# in scripts/check-deploy.sh), not built, there.

# ---- builder ---------------------------------------------------------------------------------
# bookworm, like the runtime (distroless debian12): the binaries need glibc 2.36 at most.
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# 1. Dependencies only, in a layer of their own: the workspace manifests and lock file with stub
#    sources, so a change to the code does not rebuild the ~400 dependencies. Every target a
#    manifest declares needs a file (cargo checks them when it loads the workspace).
COPY Cargo.toml Cargo.lock ./
COPY server/Cargo.toml server/
COPY client/Cargo.toml client/
COPY tests/Cargo.toml tests/
RUN mkdir -p api server client tests/e2e tests/benches \
    && echo 'fn main() {}' > build.rs \
    && touch api/lib.rs server/lib.rs client/lib.rs \
    && echo 'fn main() {}' > server/main.rs \
    && echo 'fn main() {}' > client/main.rs \
    && echo 'fn main() {}' > tests/e2e/main.rs \
    && echo 'fn main() {}' > tests/benches/generate.rs \
    && cargo build --release --locked -p dakota-server \
    && cargo build --profile release-cli --locked -p dakota-client

# 2. The real sources. `touch` makes them newer than the stubs' build outputs whatever times the
#    build context carried, so cargo rebuilds the three crates (and only them).
COPY build.rs ./
COPY proto proto
COPY api api
COPY server server
COPY client client
RUN touch build.rs api/lib.rs server/lib.rs server/main.rs client/lib.rs client/main.rs \
    && cargo build --release --locked -p dakota-server \
    && cargo build --profile release-cli --locked -p dakota-client \
    && install -D -m 0755 target/release/dakota-server /out/dakota-server \
    && install -D -m 0755 target/release-cli/dakota /out/dakota

# ---- runtime ---------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates (rustls-platform-verifier reads them), no shell
# and no package manager. The `nonroot` tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=builder /out/dakota-server /out/dakota /usr/local/bin/
COPY prompts /app/prompts
COPY knowledge /app/knowledge

# Absolute paths, so the server does not depend on its working directory. The prompt files are
# also compiled in; pointing at the copies lets an operator mount edited ones over them.
ENV DAKOTA_KB_DIR=/app/knowledge \
    DAKOTA_PROMPTS_DIR=/app/prompts \
    DAKOTA_GRPC_ADDR=0.0.0.0:50051 \
    DAKOTA_ADMIN_ADDR=0.0.0.0:8000 \
    DAKOTA_LOG_FORMAT=json

# gRPC API (ContentService, grpc.health.v1, reflection) and the admin HTTP port (/live, /ready,
# /metrics).
EXPOSE 50051 8000

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

# No shell in the image: the CLI itself checks grpc.health.v1 (exit 0 only when SERVING).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/dakota", "health", "--server", "http://127.0.0.1:50051", "--connect-timeout", "3s"]

ENTRYPOINT ["/usr/local/bin/dakota-server"]
