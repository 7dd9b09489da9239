import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { type BrowserContext, chromium, type Page } from 'playwright-core';

/** Where the tests write a screenshot of each page (the README shows one). */
export const SCREENSHOTS = resolve('docs/screenshots');

/**
 * Debian's Chromium, headless, with a fresh profile: nothing is downloaded
 * (there is no browser download here) and nothing carries over between runs.
 */
export async function launchBrowser(): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  const profile = mkdtempSync(join(tmpdir(), 'jit-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Console errors, uncaught exceptions and CSP violations on the broker's own pages. */
export interface Watch {
  errors: string[];
  violations: string[];
  /** Requests a console page made to any other origin (there must be none). */
  foreign: string[];
  /** Forget what was seen so far (after a step that was expected to log errors). */
  reset(): void;
  /** Fails the test on anything seen, except console lines matching `allow`. */
  assertClean(allow?: RegExp[]): void;
}

/** Records what a page logs; call before the first navigation. */
export async function watch(page: Page, origin: string): Promise<Watch> {
  const errors: string[] = [];
  const violations: string[] = [];
  const foreign: string[] = [];
  await page.exposeBinding('__cspViolation', (_src, v: string) => {
    violations.push(v);
  });
  // Runs in the page (as a string: the tests are type-checked without the DOM library).
  await page.addInitScript(`document.addEventListener('securitypolicyviolation', (e) =>
    window.__cspViolation(e.effectiveDirective + ' blocked ' + (e.blockedURI || '(inline)') + ' on ' + e.documentURI))`);
  page.on('console', (m) => {
    if (m.type() === 'error' && (m.location().url.startsWith(origin) || page.url().startsWith(origin))) {
      errors.push(`${m.text()} @ ${m.location().url}`);
    }
  });
  page.on('request', (r) => {
    // Top-level navigations go to the provider and back by design; what a console page loads stays home.
    if (r.isNavigationRequest() || !page.url().startsWith(origin)) return;
    if (!r.url().startsWith(`${origin}/`)) foreign.push(r.url());
  });
  page.on('pageerror', (e) => {
    if (page.url().startsWith(origin)) errors.push(`uncaught: ${e.message}`);
  });
  return {
    errors,
    violations,
    foreign,
    reset() {
      errors.length = 0;
      violations.length = 0;
    },
    assertClean(allow = []) {
      expect(violations).toEqual([]);
      expect(foreign).toEqual([]);
      expect(errors.filter((e) => !allow.some((a) => a.test(e)))).toEqual([]);
    },
  };
}

/**
 * Signs in through the provider's development login form: from wherever the
 * page is (a console page showing "Sign in"), and back to that same page.
 */
export async function signIn(page: Page, login: string): Promise<void> {
  const before = new URL(page.url());
  await page.getByRole('button', { name: 'Sign in' }).click();
  const loginBox = page.locator('input[name=login]');
  // The provider may still have a session of its own; then it sends the browser straight back.
  await Promise.race([loginBox.waitFor(), page.waitForURL((u) => u.origin === before.origin && u.pathname === before.pathname)]);
  if (new URL(page.url()).origin !== before.origin) {
    await loginBox.fill(login);
    await page.locator('input[name=password]').fill('any password');
    await page.getByRole('button', { name: 'Sign-in' }).click();
  }
  await page.waitForURL((u) => u.origin === before.origin && u.pathname === before.pathname);
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
}

/** Writes docs/screenshots/<name>.png. */
export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true, animations: 'disabled' });
}
