# The broker as a container: built in one stage, run in a smaller one as a
# non-root user. Node 24 runs the TypeScript sources directly (type stripping);
# `npm install` also builds the console (console/dist) and the `jit` command
# (dist/) through the `prepare` script, before dev dependencies are pruned.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
COPY scripts ./scripts
COPY console ./console
COPY src ./src
COPY tsconfig.json tsconfig.build.json ./
RUN npm install --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund
COPY config ./config
COPY docs/openapi.yaml ./docs/openapi.yaml

FROM node:24-bookworm-slim
ENV NODE_ENV=production HOST=0.0.0.0 PORT=8080
WORKDIR /app
COPY --from=build --chown=node:node /app /app
USER node
EXPOSE 8080
# Liveness only: /healthz never depends on Redis, so a Redis outage does not
# get every container restarted. Route traffic with /readyz instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+process.env.PORT+'/healthz').then((r)=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# Mount your config and name it with BROKER_CONFIG; secrets come in as environment variables or files.
CMD ["node", "src/main.ts"]
