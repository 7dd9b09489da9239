import { readFileSync } from 'node:fs';
import { compileErrors, validate } from '@readme/openapi-parser';
import { ERRORS } from '../../src/errors.ts';
import { OPENAPI_YAML } from '../../src/http/routes/openapi.ts';
import { call } from '../helpers/broker.ts';
import { openApiChecker, openApiDocument, registeredRoutes } from '../helpers/openapi.ts';
import { brokerApps } from '../helpers/openapi-setup.ts';
import { generatedEnums, withGeneratedEnums } from './error-codes.ts';
import { type FullBroker, startFullBroker } from './full-broker.ts';

// docs/openapi.yaml is a valid OpenAPI 3.1 document, its error codes are the
// broker's, GET /openapi.json serves it, and it lists exactly the routes the
// broker registers (with the console and AWS configured, so every router is mounted).

const doc = openApiDocument();

test('docs/openapi.yaml is a valid OpenAPI 3.1 document', async () => {
  expect(doc.openapi).toMatch(/^3\.1\./);
  const result = await validate(structuredClone(doc) as never);
  if (!result.valid) throw new Error(compileErrors(result));
  expect(result.warnings).toEqual([]);
});

test("info.version is the package's version", () => {
  expect(doc.info.version).toBe((JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version);
});

test('every operation has a unique operationId, a tag and a success answer', () => {
  const ops = openApiChecker().operations;
  expect(ops.length).toBeGreaterThan(30);
  expect(new Set(ops.map((o) => o.id)).size).toBe(ops.length);
  for (const o of ops) {
    expect(o.op.tags?.length).toBeGreaterThan(0);
    expect(Object.keys(o.op.responses).some((s) => /^[23]/.test(s))).toBe(true);
  }
});

test('the error codes are generated from src/errors.ts (run `node test/openapi/error-codes.ts --write` after changing it)', () => {
  const text = readFileSync(OPENAPI_YAML, 'utf8');
  expect(withGeneratedEnums(text)).toBe(text);
  expect(doc.components.schemas.ErrorCode.enum).toEqual(Object.keys(ERRORS));
  const enums = generatedEnums();
  for (const [code, { status }] of Object.entries(ERRORS)) {
    expect(enums[`Code${status}`]).toContain(code);
    // Each status's problem schema takes exactly its codes, and every status in the table has one.
    expect(doc.components.schemas[`Problem${status}`].properties.code.$ref).toBe(`#/components/schemas/Code${status}`);
  }
});

describe('a broker with every router mounted', () => {
  let b: FullBroker;
  beforeAll(async () => {
    b = await startFullBroker('oas-doc');
  }, 30_000);
  afterAll(async () => {
    await b?.close();
  });

  test('GET /openapi.json serves the document with server.publicUrl as its server', async () => {
    const res = await call(b.url, 'GET', '/openapi.json', {});
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const { servers, ...rest } = res.body;
    const { servers: fileServers, ...fileRest } = doc;
    expect(rest).toEqual(fileRest);
    expect(servers[0].url).toBe(b.publicUrl);
    expect(servers.slice(1)).toEqual(fileServers.slice(1));
  });

  test('every route Express registered is in the document, and every documented operation is registered', async () => {
    await call(b.url, 'GET', '/healthz', {});
    const app = [...brokerApps].at(-1);
    expect(app).toBeDefined();
    const checker = openApiChecker();
    // The console's page route is a regular expression: it serves /console/ and every deep link below it.
    const REGEXP_ROUTES: Record<string, string[]> = { [String(/^\/console\/(?!api\/|assets\/).*/i)]: ['/console/', '/console/{page}'] };
    const registered = new Set<string>();
    const undocumented: string[] = [];
    for (const r of registeredRoutes(app as never)) {
      const templates =
        typeof r.path === 'string'
          ? [r.path.replace(/:(\w+)/g, '{$1}').replace(/\/\*$/, r.path.startsWith('/console/assets') ? '/{file}' : '/{page}')]
          : (REGEXP_ROUTES[String(r.path)] ?? [`unknown RegExp route ${String(r.path)}`]);
      for (const template of templates) {
        for (const method of r.methods) {
          const key = `${method.toUpperCase()} ${template}`;
          registered.add(key);
          const mirror = /^\/console\/api(\/v1\/.*)$/.exec(template);
          const op = checker.operations.find((o) => o.method === method && o.template === (mirror ? mirror[1] : template));
          if (!op || (mirror && !op.op['x-console-api'])) undocumented.push(key);
        }
      }
    }
    expect(undocumented).toEqual([]);
    const unregistered = checker.operations.flatMap((o) => {
      const keys = [`${o.method.toUpperCase()} ${o.template}`];
      if (o.op['x-console-api']) keys.push(`${o.method.toUpperCase()} /console/api${o.template}`);
      return keys.filter((k) => !registered.has(k));
    });
    expect(unregistered).toEqual([]);
  });
});
