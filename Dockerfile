# Cairn as a container: `docker compose up` builds this.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cairn \
 && cp target/release/cairn /usr/local/bin/cairn

FROM debian:bookworm-slim
# git: exports to git repositories run the host's git.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data cairn \
 && mkdir -p /data && chown cairn /data
COPY --from=build /usr/local/bin/cairn /usr/local/bin/cairn
USER cairn
WORKDIR /data
ENV CAIRN_LISTEN=0.0.0.0:8080 \
    CAIRN_DATA_DIR=/data \
    CAIRN_LOG_FORMAT=json
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["cairn"]
CMD ["serve"]
