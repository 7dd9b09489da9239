import { jest } from '@jest/globals';
import type { Page } from 'playwright-core';
import { AGENT, ORCH, call } from '../helpers/broker.ts';
import { launchBrowser, signIn, type Watch, watch } from './browser.ts';
import { type ConsoleStack, startConsoleStack } from './stack.ts';

// A session lives exactly as long as the ID token it began with. The provider here
// issues 8-second ID tokens, and the broker is a confidential client (client secret).

jest.setTimeout(90_000);

const ID_TOKEN_TTL = 8;
let s: ConsoleStack;
let browser: Awaited<ReturnType<typeof launchBrowser>>;
let page: Page;
let w: Watch;

beforeAll(async () => {
  s = await startConsoleStack('console-expiry', { idTokenTtlSeconds: ID_TOKEN_TTL, clientSecret: 'a-client-secret-of-32-characters' });
  browser = await launchBrowser();
  page = await browser.context.newPage();
  w = await watch(page, s.url);
});
afterAll(async () => {
  await browser?.close();
  await s?.close();
});

test('the session ends with the ID token: the page says so in place, and signing in again returns to it', async () => {
  await call(s.url, 'POST', '/v1/tasks', s.t.as(ORCH), {
    taskId: 't-expiry',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'deploy',
    ttlSeconds: 600,
    grants: [{ role: 'prod-deploy' }],
  });
  const { body } = await call(s.url, 'POST', '/v1/credentials', s.t.as(AGENT), { taskId: 't-expiry', role: 'prod-deploy' });
  const deepLink = `/console/approvals/${body.approvalId}`;
  await page.goto(`${s.url}${deepLink}`);
  await signIn(page, 'approver');
  const signedInAt = Date.now();
  await page.getByText('prod-deploy').first().waitFor();

  const session = await page.evaluate(async () => (await (await fetch('/console/api/session')).json()) as { expiresAt: string });
  expect(session).toMatchObject({ signedIn: true, identity: s.person('approver'), approver: true, admin: false });
  const left = new Date(session.expiresAt).getTime() - signedInAt;
  expect(left).toBeGreaterThan(0);
  expect(left).toBeLessThanOrEqual(ID_TOKEN_TTL * 1000); // the ID token's exp, not the 8-hour default

  await page.getByText('Your session has ended.', { exact: false }).waitFor({ timeout: (ID_TOKEN_TTL + 5) * 1000 });
  expect(new URL(page.url()).pathname).toBe(deepLink);
  const status = await page.evaluate(async () => (await fetch('/console/api/v1/tasks/t-expiry')).status);
  expect(status).toBe(401);

  // The provider's own session is still alive: it sends the browser straight back, signed in.
  await signIn(page, 'approver');
  expect(new URL(page.url()).pathname).toBe(deepLink);
  await page.getByRole('button', { name: /^Approve/ }).waitFor();
  // A poll may meet the ended session before the page's own timer: a 401 then is expected.
  w.assertClean([/status of 401 /]);
});
