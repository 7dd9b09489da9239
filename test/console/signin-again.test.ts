import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { auditRecords } from '../helpers/broker.ts';
import { type ConsoleStack, startConsoleStack } from './stack.ts';

/**
 * Signing in again ends the session the browser held, but a sibling host of the same site (wiki.example.com beside
 * broker.example.com) is not kept from the SameSite=Strict cookie: its <img src=".../console/login"> must not sign
 * the person out. Browsers that say where a request came from (Sec-Fetch-Site) were told apart; found in review:
 * one that says nothing (older browsers) was taken for a sign-in typed in, and signed out by any sibling host. Such
 * a sign-in now ends the old session only once it completes, which an <img> cannot do.
 *
 * Driven over HTTP (a browser would send Sec-Fetch-Site), through the real provider's login form.
 */
let s: ConsoleStack;
beforeAll(async () => {
  s = await startConsoleStack('console-signin-again');
}, 60_000);
afterAll(async () => s?.close());

/** One cookie jar per origin, enough for the broker and the provider. */
class Jar {
  private readonly jars = new Map<string, Map<string, string>>();
  header(url: string): string {
    return [...(this.jars.get(new URL(url).origin) ?? new Map()).entries()].map(([k, v]) => `${k}=${v}`).join('; ');
  }
  take(url: string, res: Response): void {
    const jar = this.jars.get(new URL(url).origin) ?? new Map<string, string>();
    this.jars.set(new URL(url).origin, jar);
    for (const c of res.headers.getSetCookie()) {
      const [pair, ...attrs] = c.split(';');
      const at = pair!.indexOf('=');
      const [name, value] = [pair!.slice(0, at).trim(), pair!.slice(at + 1).trim()];
      if (value === '' || attrs.some((a) => /^\s*expires=Thu, 01 Jan 1970/i.test(a))) jar.delete(name);
      else jar.set(name, value);
    }
  }
  get(url: string, name: string): string | undefined {
    return this.jars.get(new URL(url).origin)?.get(name);
  }
  set(url: string, name: string, value: string): void {
    const jar = this.jars.get(new URL(url).origin) ?? new Map<string, string>();
    jar.set(name, value);
    this.jars.set(new URL(url).origin, jar);
  }
}

/** Follows redirects by hand (cookies per origin) and fills the provider's login form; returns the last answer. */
async function browse(
  jar: Jar,
  start: string,
  login: string,
  headers: Record<string, string> = {},
): Promise<{ url: string; res: Response }> {
  let url = start;
  let init: RequestInit = { headers };
  for (let hop = 0; hop < 15; hop++) {
    const res = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers as object), cookie: jar.header(url) } });
    jar.take(url, res);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      url = new URL(location, url).toString();
      init = {};
      continue;
    }
    const html = res.status === 200 && (res.headers.get('content-type') ?? '').includes('text/html') ? await res.text() : '';
    const form = /<form[^>]*action="([^"]+)"[^>]*>([\s\S]*?)<\/form>/i.exec(html);
    if (!form || !/name="login"/.test(form[2]!)) return { url, res };
    const fields = new URLSearchParams();
    for (const input of form[2]!.matchAll(/<input[^>]*>/gi)) {
      const name = /name="([^"]+)"/.exec(input[0])?.[1];
      if (name) fields.set(name, /value="([^"]*)"/.exec(input[0])?.[1] ?? '');
    }
    fields.set('login', login);
    fields.set('password', 'any password');
    url = new URL(form[1]!, url).toString();
    init = { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: fields.toString() };
  }
  throw new Error(`sign-in did not finish: ${url}`);
}

const sessionName = () => `jit-console-${new URL(s.url).port}`;
const signedIn = async (cookie: string | undefined) =>
  (
    (await (await fetch(`${s.url}/console/api/session`, { headers: { cookie: `${sessionName()}=${cookie}` } })).json()) as {
      signedIn: boolean;
    }
  ).signedIn;

test('a sign-in that does not say where it came from ends the held session once it completes, not when it starts', async () => {
  const jar = new Jar();
  // Signed in once (the header a typed-in address carries).
  await browse(jar, `${s.url}/console/login`, 'admin', { 'sec-fetch-site': 'none' });
  const first = jar.get(s.url, sessionName());
  expect(first).toBeDefined();
  expect(await signedIn(first)).toBe(true);

  // Another host's <img> in a browser that sends no Sec-Fetch-Site: the sign-in starts and goes no further.
  const img = await fetch(`${s.url}/console/login`, { redirect: 'manual', headers: { cookie: jar.header(s.url) } });
  expect(img.status).toBe(303);
  expect(img.headers.getSetCookie().some((c) => c.startsWith(`${sessionName()}=`))).toBe(false);
  // Before: signed out at once.
  expect(await signedIn(first)).toBe(true);

  // The person signs in again in that browser, to the end: the session held before ends with it.
  const done = await browse(jar, `${s.url}/console/login`, 'approver');
  expect(new URL(done.url).pathname).toBe('/console/');
  const second = jar.get(s.url, sessionName());
  expect(second).toBeDefined();
  expect(second).not.toBe(first);
  expect(await signedIn(second)).toBe(true);
  expect(await signedIn(first)).toBe(false);
  await s.t.broker.deps.audit.flush();
  const signouts = (await auditRecords(s.t.broker.deps.redis, s.t.broker.deps.keys)).filter((r) => r.action === 'console.signout');
  expect(signouts).toEqual([expect.objectContaining({ actor: s.person('admin'), detail: { reason: 'signed_in_again' } })]);
}, 60_000);

test('a sign-in that does not complete leaves the held session as it was', async () => {
  const jar = new Jar();
  await browse(jar, `${s.url}/console/login`, 'admin', { 'sec-fetch-site': 'none' });
  const held = jar.get(s.url, sessionName());
  // Started without Sec-Fetch-Site, abandoned at the provider's form.
  const started = await fetch(`${s.url}/console/login`, { redirect: 'manual', headers: { cookie: jar.header(s.url) } });
  expect(started.status).toBe(303);
  // Its callback with a code the provider never gave ends nothing either.
  jar.take(s.url, started);
  const state = new URL(started.headers.get('location')!).searchParams.get('state');
  const bogus = await fetch(`${s.url}/console/callback?code=made-up&state=${state}`, {
    redirect: 'manual',
    headers: { cookie: jar.header(s.url) },
  });
  expect(bogus.headers.get('location')).toMatch(/signin_error=/);
  expect(await signedIn(held)).toBe(true);
}, 60_000);
