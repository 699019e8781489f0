# syntax=docker/dockerfile:1
# The Isthmus image, for CI with a Docker engine (not this repository's CI: it
# has none and builds the same layout with buildah, packaging/image):
#
#   docker build --build-arg ISTHMUS_COMMIT=$(git rev-parse --short HEAD) \
#     -t ghcr.io/isthmus-dev/isthmus:0.1.0 .
#
# One binary: `isthmus run` (gateway), `isthmus mirror`, `link`, `check`, ...
# (.git is not sent to the builder, see .dockerignore: the commit for
# `isthmus --version` comes from the build argument, else `unknown`.)

FROM rust:1-bookworm AS build
# pingora's zlib-ng and friends build with cmake.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG ISTHMUS_COMMIT=""
# The release profile keeps debug info (debug = 1); the image does not need it.
RUN ISTHMUS_COMMIT="${ISTHMUS_COMMIT}" cargo build --release -p isthmus --locked \
    && mkdir -p /out && objcopy --strip-debug target/release/isthmus /out/isthmus

# glibc, libgcc_s and a nonroot user (65532), nothing else: no shell, no package
# manager. Bookworm, like the builder, so the glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG ISTHMUS_COMMIT=""
LABEL org.opencontainers.image.title="isthmus" \
      org.opencontainers.image.description="mTLS ingress gateway for cross-cluster Kubernetes traffic" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${ISTHMUS_COMMIT}"
COPY --from=build /out/isthmus /usr/local/bin/isthmus
USER 65532:65532
EXPOSE 4143 4191 4192
ENTRYPOINT ["/usr/local/bin/isthmus"]
