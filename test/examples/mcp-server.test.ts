import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { delayingProxy } from '../helpers/delaying-proxy.ts';
import { NODE24, ensureBuilt } from '../helpers/cli.ts';

/**
 * docs/examples/mcp-server.ts, run as its own process exactly as the docs
 * say, driven by the MCP SDK's client, against a real broker and a resource
 * server that checks every token by introspection.
 */
let t: TestBroker;
let api: Server;
let apiUrl: string;
const seen: { path: string; active: boolean; scope?: string; task?: string }[] = [];
const dir = mkdtempSync(join(tmpdir(), 'jit-mcp-'));
const tokenFile = join(dir, 'svid');

beforeAll(async () => {
  await ensureBuilt(); // the example imports jit-broker/client, i.e. dist/
  t = await startTestBroker('mcp-example');
  writeFileSync(tokenFile, t.issuer.svid(AGENT, { ttl: 600 }));
  // The tickets API: accepts a bearer token only while the broker says it is active.
  api = createServer(async (req, res) => {
    const token = (req.headers.authorization ?? '').replace(/^Bearer /, '');
    const r = await fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { ...t.as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    const info = (await r.json()) as { active: boolean; scope?: string; task_id?: string };
    seen.push({ path: req.url ?? '', active: info.active, scope: info.scope, task: info.task_id });
    // A debugging route, as many APIs have one: it echoes the request's headers, the bearer token among them.
    if (req.url?.startsWith('/api/debug/echo')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ headers: req.headers, token }));
      return;
    }
    res.writeHead(info.active ? 200 : 401, { 'content-type': 'application/json' });
    res.end(JSON.stringify(info.active ? { ticket: req.url?.split('/').pop(), status: 'open' } : { error: 'invalid_token' }));
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}/api`;
}, 120_000);
afterAll(async () => {
  await new Promise((r) => api?.close(r));
  await t?.close();
});

/** The example as its host runs it; `nodeArgs` go before the script, `brokerUrl` replaces the broker's. */
async function startServer(taskId: string, opts: { brokerUrl?: string; nodeArgs?: string[] } = {}): Promise<Client> {
  const client = new Client({ name: 'test-host', version: '1.0.0' });
  await client.connect(
    new StdioClientTransport({
      command: NODE24,
      args: [...(opts.nodeArgs ?? []), resolve('docs/examples/mcp-server.ts')],
      cwd: resolve('.'),
      env: {
        PATH: process.env.PATH ?? '',
        JIT_BROKER_URL: opts.brokerUrl ?? t.url,
        JIT_TOKEN_FILE: tokenFile,
        JIT_TASK_ID: taskId,
        JIT_ROLE: 'tickets-api',
        JIT_RESOURCE_URL: apiUrl,
      },
      stderr: 'pipe',
    }),
  );
  return client;
}
const text = (r: Awaited<ReturnType<Client['callTool']>>) => (r.content as { type: string; text: string }[]).map((c) => c.text).join('\n');

describe('docs/examples/mcp-server.ts', () => {
  it('calls the API with a task-scoped token the model never sees; revocation cuts it off; closing gives leases back', async () => {
    const taskId = `t-mcp-${Date.now()}`;
    const opened = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId,
      agent: 'spiffe://dev.local/agent/support',
      tenant: 'acme',
      purpose: 'mcp example',
      ttlSeconds: 600,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
    expect(opened.status).toBe(201);
    const client = await startServer(taskId);
    try {
      const tools = await client.listTools();
      expect(tools.tools.map((x) => x.name).sort()).toEqual(['call_api', 'task_status']);

      const first = await client.callTool({ name: 'call_api', arguments: { path: '/tickets/4711' } });
      expect(first.isError).toBe(false);
      expect(text(first)).toBe('HTTP 200\n{"ticket":"4711","status":"open"}');
      expect(seen.at(-1)).toEqual({ path: '/api/tickets/4711', active: true, scope: 'tickets:read', task: taskId });
      // A second call reuses the cached credential: still one lease.
      await client.callTool({ name: 'call_api', arguments: { path: 'tickets/4712' } });
      const task = await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH));
      expect(task.body.leases).toHaveLength(1);
      const leaseId = task.body.leases[0].leaseId as string;

      const status = await client.callTool({ name: 'task_status', arguments: {} });
      expect(text(status)).toContain(`${leaseId} tickets-api active`);
      // Nothing the model reads carries the token.
      expect(JSON.stringify([first, status])).not.toMatch(/ey[A-Za-z0-9_-]{20,}/);

      // The token only ever goes below JIT_RESOURCE_URL: a path cannot name another host or climb out.
      const calls = seen.length;
      const up = await client.callTool({ name: 'call_api', arguments: { path: '../admin/keys' } });
      expect(up.isError).toBe(true);
      expect(text(up)).toMatch(/is not below/);
      expect(seen).toHaveLength(calls);
      await client.callTool({ name: 'call_api', arguments: { path: '//evil.example/x' } });
      expect(seen.at(-1)?.path).toBe('/api/evil.example/x');

      // The orchestrator ends the task: the API now refuses the same cached token.
      expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
      const after = await client.callTool({ name: 'call_api', arguments: { path: '/tickets/4711' } });
      expect(after.isError).toBe(true);
      expect(text(after)).toMatch(/^HTTP 401/);
    } finally {
      await client.close();
    }
  }, 60_000);

  it('an API that echoes the token does not put it in front of the model', async () => {
    const taskId = `t-mcp-echo-${Date.now()}`;
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId,
      agent: 'spiffe://dev.local/agent/support',
      tenant: 'acme',
      purpose: 'mcp example',
      ttlSeconds: 600,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
    const client = await startServer(taskId);
    try {
      const r = await client.callTool({ name: 'call_api', arguments: { path: '/debug/echo' } });
      expect(text(r)).toMatch(/^HTTP 200\n/);
      expect(text(r)).toContain('[access token]');
      expect(JSON.stringify(r)).not.toMatch(/ey[A-Za-z0-9_-]{20,}/);
    } finally {
      await client.close();
    }
  }, 60_000);

  it('refuses a plain-http API on another host: the token would cross the network in clear text', () => {
    const run = spawnSync(NODE24, [resolve('docs/examples/mcp-server.ts')], {
      cwd: resolve('.'),
      env: {
        PATH: process.env.PATH ?? '',
        JIT_BROKER_URL: t.url,
        JIT_TOKEN_FILE: tokenFile,
        JIT_TASK_ID: 't-any',
        JIT_ROLE: 'tickets-api',
        JIT_RESOURCE_URL: 'http://tickets.example/api',
      },
      input: '',
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(run.status).toBe(2);
    expect(run.stderr).toMatch(/JIT_RESOURCE_URL .*https/);
  }, 60_000);

  it('gives its leases back when the host closes it', async () => {
    const taskId = `t-mcp-close-${Date.now()}`;
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId,
      agent: 'spiffe://dev.local/agent/support',
      tenant: 'acme',
      purpose: 'mcp example',
      ttlSeconds: 600,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    });
    const client = await startServer(taskId);
    const r = await client.callTool({ name: 'call_api', arguments: { path: '/tickets/1' } });
    expect(r.isError).toBe(false);
    await client.close();
    const leaseId = (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body.leases[0].leaseId;
    const lease = await waitFor(async () => {
      const l = (await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(ORCH))).body;
      return l.status === 'revoked' ? l : undefined;
    }, 8000);
    expect(lease.reason).toBe('revoked_by_caller');
  }, 60_000);

  it('a refusal reaches the model as the broker’s reason', async () => {
    const taskId = `t-mcp-refused-${Date.now()}`;
    await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      taskId,
      agent: 'spiffe://dev.local/agent/support',
      tenant: 'acme',
      purpose: 'mcp example',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api', scopes: [] }],
    });
    const client = await startServer(taskId);
    try {
      const r = await client.callTool({ name: 'call_api', arguments: { path: '/tickets/1' } });
      expect(r.isError).toBe(true);
      expect(text(r)).toMatch(/^the broker refused: 403 role_not_granted: /);
    } finally {
      await client.close();
    }
  }, 60_000);
});

/** Opens a task granting tickets-api to the example's agent. */
async function openTask(name: string): Promise<string> {
  const taskId = `t-mcp-${name}-${Date.now()}`;
  const opened = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: 'spiffe://dev.local/agent/support',
    tenant: 'acme',
    purpose: 'mcp example',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(opened.status).toBe(201);
  return taskId;
}

/** The task's one lease, once the server gave it back (revoked by its holder, not ended by anything else). */
async function revokedByServer(taskId: string): Promise<void> {
  const leaseId = await waitFor(
    async () => (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body.leases[0]?.leaseId as string,
    8000,
  );
  const lease = await waitFor(async () => {
    const l = (await call(t.url, 'GET', `/v1/leases/${leaseId}`, t.as(ORCH))).body;
    return l.status === 'revoked' ? l : undefined;
  }, 8000);
  expect(lease.reason).toBe('revoked_by_caller');
  expect((await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body.leases).toHaveLength(1);
}

/** The server's pid, what it wrote to stderr, and when it exited. */
function watch(client: Client) {
  const transport = client.transport as StdioClientTransport;
  let stderr = '';
  transport.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString('utf8');
  });
  const exited = new Promise<void>((r) => {
    client.onclose = r;
  });
  return { pid: transport.pid!, stderr: () => stderr, exited };
}
// The exit code as the server's own process saw it (the SDK's transport does not pass it on), preloaded.
const reportExit = "process.on('exit', (c) => process.stderr.write('exit code ' + c + '\\n'));";

describe('docs/examples/mcp-server.ts gives its credentials back however it ends', () => {
  it.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)(
    'on %s',
    async (signal) => {
      const taskId = await openTask(signal.toLowerCase());
      const client = await startServer(taskId, { nodeArgs: ['--import', `data:text/javascript,${encodeURIComponent(reportExit)}`] });
      const server = watch(client);
      expect((await client.callTool({ name: 'call_api', arguments: { path: '/tickets/1' } })).isError).toBe(false);
      process.kill(server.pid, signal);
      await server.exited;
      await revokedByServer(taskId);
      expect(server.stderr()).toContain('exit code 0');
    },
    60_000,
  );

  // A bug in the server, or in a library it uses: the process can still act, so it revokes and exits non-zero.
  it.each([
    ['an uncaught exception', "throw new Error('boom')"],
    ['an unhandled rejection', "Promise.reject(new Error('boom'))"],
  ])(
    'on %s',
    async (_what, crash) => {
      const taskId = await openTask('crash');
      const preload = `process.on('SIGUSR2', () => { ${crash}; }); ${reportExit}`;
      const client = await startServer(taskId, { nodeArgs: ['--import', `data:text/javascript,${encodeURIComponent(preload)}`] });
      const server = watch(client);
      expect((await client.callTool({ name: 'call_api', arguments: { path: '/tickets/1' } })).isError).toBe(false);
      process.kill(server.pid, 'SIGUSR2');
      await server.exited;
      await revokedByServer(taskId);
      expect(server.stderr()).toContain('boom');
      expect(server.stderr()).toContain('exit code 1');
    },
    60_000,
  );

  it('a credential still being issued when the host closes it is revoked too', async () => {
    const taskId = await openTask('inflight');
    // The broker's answer to the credential request comes 1 s late (a slow upstream, a busy broker).
    const proxy = await delayingProxy(t.url, /^\/v1\/credentials$/, 1000);
    try {
      const client = await startServer(taskId, { brokerUrl: proxy.url });
      const calling = client.callTool({ name: 'call_api', arguments: { path: '/tickets/1' } }).catch((e: unknown) => e);
      await waitFor(async () => proxy.heldBody());
      await client.close(); // the host goes while the server waits for the broker
      expect(await proxy.landed()).toBe(201);
      await revokedByServer(taskId);
      await calling;
    } finally {
      await proxy.close();
    }
  }, 60_000);
});
