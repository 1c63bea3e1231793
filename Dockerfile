# syntax=docker/dockerfile:1
# Multi-stage: a static binary on a distroless base, run as non-root.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN scripts/build.sh /out/sluice

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
USER nonroot:nonroot
EXPOSE 4000
ENV SLUICE_ADDR=:4000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/sluice", "healthcheck", "--url", "http://127.0.0.1:4000/healthz"]
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve"]
