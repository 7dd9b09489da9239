/**
 * Revocation lag as a user sees it: from `complete` returning (and from the
 * token's `exp`) until GET /v1/leases shows revoked/expired AND introspection
 * answers inactive. Polled every 2 ms, so figures carry up to ~2 ms of error.
 */
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! * 10) / 10;
};

export async function measureLag(url: string, o: { orchToken: string; agentToken: string; samples: number; openTask: (id: string, ttl?: number) => Promise<void> }) {
  const auth = (t: string) => ({ authorization: `Bearer ${t}` });
  const issue = async (taskId: string, ttlSeconds: number) => {
    const r = await fetch(`${url}/v1/credentials`, { method: 'POST', headers: { ...auth(o.agentToken), 'content-type': 'application/json' }, body: JSON.stringify({ taskId, role: 'demo-api', ttlSeconds }) });
    return await r.json() as { leaseId: string; expiresAt: string; credentials: { access_token: string } };
  };
  const ended = async (leaseId: string, token: string, want: string) => {
    const l = await (await fetch(`${url}/v1/leases/${leaseId}`, { headers: auth(o.agentToken) })).json() as { status: string };
    if (l.status !== want) return false;
    const i = await (await fetch(`${url}/v1/introspect`, { method: 'POST', headers: { ...auth(o.agentToken), 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token }) })).json() as { active: boolean };
    return i.active === false;
  };
  const fromComplete: number[] = [];
  for (let i = 0; i < o.samples; i++) {
    const taskId = `lag-c-${i}`;
    await o.openTask(taskId);
    const c = await issue(taskId, 300);
    await fetch(`${url}/v1/tasks/${taskId}/complete`, { method: 'POST', headers: auth(o.orchToken) });
    const t0 = performance.now();
    while (!(await ended(c.leaseId, c.credentials.access_token, 'revoked'))) await new Promise((r) => setTimeout(r, 2));
    fromComplete.push(performance.now() - t0);
  }
  // From exp: leases with 1-2 s TTLs, each watched from its own exp.
  await o.openTask('lag-exp');
  const fromExp: number[] = [];
  const batch = await Promise.all(Array.from({ length: o.samples }, (_, i) => new Promise<{ leaseId: string; expiresAt: string; credentials: { access_token: string } }>((res) => setTimeout(() => res(issue('lag-exp', 1)), i * 5))));
  await Promise.all(batch.map(async (c) => {
    const exp = Date.parse(c.expiresAt);
    await new Promise((r) => setTimeout(r, Math.max(0, exp - Date.now())));
    while (!(await ended(c.leaseId, c.credentials.access_token, 'expired'))) await new Promise((r) => setTimeout(r, 2));
    fromExp.push(Date.now() - exp);
  }));
  return { fromComplete: { p50: pct(fromComplete, 50), p99: pct(fromComplete, 99), samples: fromComplete.length }, fromExp: { p50: pct(fromExp, 50), p99: pct(fromExp, 99), samples: fromExp.length } };
}
