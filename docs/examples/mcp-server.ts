/**
 * An MCP server that gives an agent an API to call, never the credential.
 *
 * The agent's host (Claude Desktop, an IDE, an agent framework) launches
 * this server once per task with the agent's workload identity and task:
 *
 *   JIT_BROKER_URL=http://127.0.0.1:8080   the broker
 *   JIT_TOKEN_FILE=/run/secrets/svid        the agent's workload JWT (re-read on every request)
 *   JIT_TASK_ID=t-4711                      the task the orchestrator opened for this agent
 *   JIT_ROLE=tickets-api                    a jwt role granted to the task
 *   JIT_RESOURCE_URL=https://tickets.internal/api   the API that role's tokens are for
 *
 * The model sees two tools. `call_api` asks the broker for a task-scoped
 * token (cached by BrokerClient and refreshed shortly before it expires),
 * calls the API with it and returns only the response: the token never
 * enters the model's context, and requests can only go to JIT_RESOURCE_URL,
 * so a prompt injection cannot send the token elsewhere; the token is taken
 * out of what the API answers, in case the API echoes it, and JIT_RESOURCE_URL
 * must be https (plain http only on loopback). `task_status` shows
 * the task's deadline and leases. When the server ends (closed, signalled or
 * crashed), the leases it holds are revoked, even one still being issued.
 *
 * Run from a checkout (after `npm install`, which builds jit-broker/client):
 *   node_modules/.bin/node docs/examples/mcp-server.ts   (the project's Node 24: the machine's node may not run .ts)
 * test/examples/mcp-server.test.ts drives it with the MCP SDK's own client.
 */
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { BrokerClient, BrokerResponseError } from 'jit-broker/client';
import { z } from 'zod';

function required(name: string): string {
  const v = process.env[name];
  if (!v) {
    console.error(`mcp-server: set ${name}`);
    process.exit(2);
  }
  return v;
}

const taskId = required('JIT_TASK_ID');
const role = required('JIT_ROLE');
const resource = new URL(required('JIT_RESOURCE_URL'));
// The token is a bearer credential: over plain http anyone on the path can use it until it expires.
if (resource.protocol !== 'https:' && !(resource.protocol === 'http:' && ['localhost', '127.0.0.1', '[::1]'].includes(resource.hostname))) {
  console.error(
    'mcp-server: JIT_RESOURCE_URL must be https (plain http only to a loopback host): the token would cross the network in clear text',
  );
  process.exit(2);
}
const broker = new BrokerClient(); // JIT_BROKER_URL, JIT_TOKEN / JIT_TOKEN_FILE

/**
 * The API's answer without the token: an API that echoes its request (a debugging route, an error page quoting
 * the Authorization header) would otherwise put the token in front of the model. The signature is taken out
 * wherever it appears, so not even the token's pieces (a decoded payload beside its signature) get through.
 */
function withoutToken(text: string, token: string): string {
  const signature = token.slice(token.lastIndexOf('.') + 1);
  return text.replaceAll(token, '[access token]').replaceAll(signature, '[access token signature]');
}

/** What the model reads when the broker says no: the broker's reason, which is safe to show. */
function refusal(err: unknown) {
  const text =
    err instanceof BrokerResponseError
      ? `the broker refused: ${err.status} ${err.code}: ${err.detail}`
      : `failed: ${(err as Error).message}`;
  return { isError: true, content: [{ type: 'text' as const, text }] };
}

const server = new McpServer({ name: 'jit-broker-example', version: '1.0.0' });

server.registerTool(
  'call_api',
  {
    title: `Call ${resource.origin}`,
    description: `Calls the ${role} API at ${resource.href} with a short-lived credential for task ${taskId}. Give a path below that URL.`,
    inputSchema: {
      method: z.enum(['GET', 'POST', 'PUT', 'PATCH', 'DELETE']).default('GET'),
      path: z.string().describe('path below the API base, e.g. /tickets/4711'),
      body: z.string().optional().describe('JSON request body'),
    },
  },
  async ({ method, path, body }) => {
    const base = resource.pathname.replace(/\/$/, '');
    const url = new URL(`${base}/${path.replace(/^\/+/, '')}`, resource);
    if (url.origin !== resource.origin || !url.pathname.startsWith(`${base}/`))
      return refusal(new Error(`${path} is not below ${resource.href}`));
    try {
      const cred = await broker.getCredential<{ access_token: string }>({ taskId, role });
      const res = await fetch(url, {
        method,
        headers: { authorization: `Bearer ${cred.credentials.access_token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body,
        redirect: 'manual', // never follow the API elsewhere with the token
      });
      const text = withoutToken(await res.text(), cred.credentials.access_token).slice(0, 10_000);
      return { isError: !res.ok, content: [{ type: 'text', text: `HTTP ${res.status}\n${text}` }] };
    } catch (err) {
      return refusal(err);
    }
  },
);

server.registerTool(
  'task_status',
  { title: 'Task status', description: `The status, deadline and credentials (without secrets) of task ${taskId}.` },
  async () => {
    try {
      const t = await broker.getTask(taskId);
      const leases = t.leases.map((l) => `${l.leaseId} ${l.role} ${l.status} until ${l.expiresAt}`).join('\n');
      return { content: [{ type: 'text', text: `task ${t.taskId}: ${t.status}, deadline ${t.expiresAt}\n${leases}` }] };
    } catch (err) {
      return refusal(err);
    }
  },
);

// Give the credentials back however the server ends, while it still can: the host closing stdin (the MCP stdio
// transport ends when the client goes) or signalling, or a crash: an uncaught exception, or an unhandled rejection
// (Node raises those as uncaught exceptions). broker.close() also waits (up to 3 s: hosts kill a server a few
// seconds after closing its stdin) for a credential still being issued, and revokes it too.
// SIGKILL (or the power going) cannot be handled: then the lease's TTL, capped at the task's deadline, ends it,
// and when the orchestrator completes the task, the broker revokes every lease the task has.
let closing = false;
async function shutdown(code: number) {
  if (code) process.exitCode = code;
  if (closing) return;
  closing = true;
  await broker.close({ waitMs: 3000 });
  process.exit();
}
process.stdin.on('end', () => shutdown(0));
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => shutdown(0));
process.on('uncaughtException', (err) => {
  console.error('mcp-server: crashed:', err);
  void shutdown(1);
});

await server.connect(new StdioServerTransport());
