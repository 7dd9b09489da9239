import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Router } from 'express';
import { parse } from 'yaml';

/** The OpenAPI 3.1 document of the whole API, as committed: the source of `GET /openapi.json`. */
export const OPENAPI_YAML = fileURLToPath(new URL('../../../docs/openapi.yaml', import.meta.url));

/**
 * Reads docs/openapi.yaml with `publicUrl` as its server, so generated
 * clients and tools point at this broker. Throws (a startup error) when the
 * file is missing or does not parse.
 */
export function loadOpenApi(publicUrl: string, file = OPENAPI_YAML): Record<string, unknown> {
  let doc: Record<string, unknown>;
  try {
    doc = parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`cannot load the OpenAPI document ${file}: ${(err as Error).message}`);
  }
  const [first, ...rest] = (doc.servers as Record<string, unknown>[] | undefined) ?? [];
  return { ...doc, servers: [{ ...first, url: publicUrl }, ...rest] };
}

/** `GET /openapi.json`: read and serialised once, when the app is built. */
export function openApiRoutes(publicUrl: string): Router {
  const body = JSON.stringify(loadOpenApi(publicUrl));
  const r = Router();
  r.get('/openapi.json', (_req, res) => {
    res.setHeader('Cache-Control', 'public, max-age=300');
    res.type('application/json').send(body);
  });
  return r;
}
