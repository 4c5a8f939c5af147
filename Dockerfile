# aftercommit's image: the worker daemon (`worker`) and the CLI
# (`aftercommit`), static binaries on distroless. docker-compose.yml runs
# `aftercommit migrate up` once, then `worker`.
#
#   docker build -t aftercommit .
#   docker run --rm -e DATABASE_URL=postgres://… aftercommit aftercommit migrate up
#   docker run --rm -e DATABASE_URL=postgres://… aftercommit worker
#
# Plain RUN steps (no BuildKit cache mounts), so the classic builder of
# Debian's docker-compose builds it too.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION} AS build
WORKDIR /src
ENV CGO_ENABLED=0
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -trimpath -tags nodevdb -ldflags="-s -w" -o /out/worker ./cmd/worker \
 && go build -trimpath -tags nodevdb -ldflags="-s -w" -o /out/aftercommit ./cmd/aftercommit

# static-debian12 has CA certificates (sslmode=verify-full) and tzdata, and
# no shell; :nonroot runs as uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/worker /out/aftercommit /usr/local/bin/
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER nonroot:nonroot
# The worker handles SIGTERM itself (graceful shutdown, then exit 0); give it
# more than its --shutdown-timeout (default 30s) before SIGKILL, e.g.
# `docker stop -t 45` or stop_grace_period in compose.
STOPSIGNAL SIGTERM
CMD ["worker"]
