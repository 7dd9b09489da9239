/**
 * Revocation lag as a user sees it: from `complete` returning (and from the
 * token's `exp`) until GET /v1/leases shows revoked/expired AND introspection
 * answers inactive. Polled every 2 ms, so figures carry up to ~2 ms of error.
 */
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! * 10) / 10;
};

export async function measureLag(
  url: string,
  o: { orchToken: string; agentToken: string; samples: number; openTask: (id: string, ttl?: number) => Promise<void> },
) {
  const auth = (t: string) => ({ authorization: `Bearer ${t}` });
  const issue = async (taskId: string, ttlSeconds: number) => {
    const r = await fetch(`${url}/v1/credentials`, {
      method: 'POST',
      headers: { ...auth(o.agentToken), 'content-type': 'application/json' },
      body: JSON.stringify({ taskId, role: 'demo-api', ttlSeconds }),
    });
    return (await r.json()) as { leaseId: string; expiresAt: string; credentials: { access_token: string } };
  };
  const ended = async (leaseId: string, token: string, want: string) => {
    const l = (await (await fetch(`${url}/v1/leases/${leaseId}`, { headers: auth(o.agentToken) })).json()) as { status: string };
    if (l.status !== want) return false;
    const i = (await (
      await fetch(`${url}/v1/introspect`, {
        method: 'POST',
        headers: { ...auth(o.agentToken), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      })
    ).json()) as { active: boolean };
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
  // From exp: leases with a 1 s TTL issued 5 ms apart. Watching 200 of them at
  // once with 2 ms polls would itself saturate the broker, so the lag is read
  // from the broker's own record (revokedAt - expiresAt, ms precision) once
  // they have ended, and introspection is checked to be inactive for each.
  await o.openTask('lag-exp');
  const batch: { leaseId: string; expiresAt: string; credentials: { access_token: string } }[] = [];
  for (let i = 0; i < o.samples; i++) {
    batch.push(await issue('lag-exp', 1));
    await new Promise((r) => setTimeout(r, 5));
  }
  const fromExp: number[] = [];
  for (const c of batch) {
    for (;;) {
      const l = (await (await fetch(`${url}/v1/leases/${c.leaseId}`, { headers: auth(o.agentToken) })).json()) as {
        status: string;
        expiresAt: string;
        revokedAt?: string;
      };
      if (l.status === 'expired' && (await ended(c.leaseId, c.credentials.access_token, 'expired'))) {
        fromExp.push(Date.parse(l.revokedAt!) - Date.parse(l.expiresAt));
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  return {
    fromComplete: { p50: pct(fromComplete, 50), p99: pct(fromComplete, 99), samples: fromComplete.length },
    fromExp: { p50: pct(fromExp, 50), p99: pct(fromExp, 99), samples: fromExp.length },
  };
}
