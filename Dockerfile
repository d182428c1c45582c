# Container image of the registry mirror.
#
#   docker build -t registry-mirror .
#   docker run -d --name mirror -p 5000:5000 -v mirror-cache:/data --stop-timeout 30 registry-mirror
#
# Configuration: mount a file and name it with MIRROR_CONFIG; MIRROR_* variables override single keys
# (docs/configuration.md):
#
#   docker run ... -v "$PWD/mirror.yaml:/etc/registry-mirror/config.yaml:ro" \
#                  -e MIRROR_CONFIG=/etc/registry-mirror/config.yaml registry-mirror
#
# A relative path in that file is relative to the file's directory (/etc/registry-mirror), so a file that sets
# storage.path names the volume absolutely: `storage: { path: /data }` (without the key, ./data of / is /data).
#
# Two build stages (compiled output; production dependencies), then a runtime stage that holds only those
# two and package.json: no TypeScript sources, no dev dependencies, no npm cache.

# A build argument so a deployment can pin the base by digest (node:24-bookworm-slim@sha256:...).
ARG NODE_IMAGE=node:24-bookworm-slim

# --- build: every dependency, then tsc compiles src/ to dist/ (tsconfig.build.json) -------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
# Manifests first: the install layer is reused for as long as the dependencies do not change.
COPY package.json package-lock.json ./
# --ignore-scripts: nothing the build needs runs install scripts, and no dependency gets to run code here.
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# `npm run build` also copies the console's browser files (src/console/assets/) beside its compiled code;
# uPlot's come from node_modules, a production dependency.
RUN npm run build

# --- prod-deps: production dependencies alone, from the same lockfile --------------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts && npm cache clean --force

# --- runtime -----------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# "type": "module": dist/*.js are ES modules.
COPY package.json ./
# The Node/V8 flags the entrypoint starts node with: the same file scripts/start.sh and the bench read.
COPY scripts/node-flags ./node-flags

# The cache volume, owned by the unprivileged user (uid/gid 1000, the base image's `node` user). A new named
# volume starts as a copy of this directory, ownership included, so the mirror can write to it.
RUN mkdir /data && chown 1000:1000 /data
VOLUME ["/data"]
# The working directory is / so that the default storage.path, ./data, is the /data volume; a config file
# may still name another path.
WORKDIR /

# Numeric, so Kubernetes' runAsNonRoot can verify it without a runAsUser of its own.
USER 1000:1000
EXPOSE 5000

# Liveness, for `docker run` and compose (Kubernetes uses its own probes, see helm/). It loads the
# configuration exactly as the mirror does (file named by MIRROR_CONFIG, then MIRROR_* overrides), so it
# probes whatever `listen` address is configured; there is no curl in the slim image, and node has fetch.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["node", "-e", "import('/app/dist/config/load.js').then(async ({ loadConfig }) => { const [, bracketed, plain, port] = /^(?:\\[(.*)\\]|(.*)):(\\d+)$/.exec(loadConfig().listen); const host = bracketed ?? plain; const target = host === '' || host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? '[' + host + ']' : host; const res = await fetch('http://' + target + ':' + port + '/healthz', { signal: AbortSignal.timeout(4000) }); process.exit(res.ok ? 0 : 1); }).catch((err) => { console.error(String(err)); process.exit(1); })"]

# SIGTERM (docker stop, Kubernetes) starts a graceful shutdown: no new requests, running downloads get up to
# shutdownGrace (25 s) to finish. Node runs as PID 1 (the shell only reads /app/node-flags and `exec`s node in
# its place; arguments after the image name still reach the mirror) and installs its own SIGTERM/SIGINT
# handlers, which is what PID 1 needs to react to them; it starts no child processes, so there are no zombies
# to reap. Give `docker stop` more than its default 10 s (--stop-timeout 30).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "-c", "exec node $(sed 's/#.*//' /app/node-flags) --enable-source-maps /app/dist/main.js \"$@\"", "mirror"]
CMD []
