import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from '@jest/globals';

/**
 * The previous release (the commit the last upgrade note is about), run by the upgrade tests
 * (test/ops/upgrade*.test.ts) as real processes from its own tree: `git archive` of the commit into a
 * temporary directory, with this checkout's node_modules. Its runtime dependencies must therefore be this
 * checkout's too: rate-limiter-flexible, which the broker no longer uses (src/http/rate-window.ts), stays a
 * devDependency at the previous release's version for that reason alone; drop it when PREVIOUS_RELEASE moves past
 * 2f384e4. Bump it with each release, to the one before.
 */
export const PREVIOUS_RELEASE = 'dd78339';

/** Whether the clone holds the previous release (a shallow clone does not); a reason to skip when not. */
export function previousReleaseMissing(): string | undefined {
  try {
    execFileSync('git', ['cat-file', '-e', `${PREVIOUS_RELEASE}^{commit}`], { stdio: 'ignore' });
    return undefined;
  } catch {
    return `commit ${PREVIOUS_RELEASE} (the previous release) is not in this clone (a shallow clone? git fetch --unshallow)`;
  }
}

/** `test`, or `test.skip` with a warning naming `file` where the clone lacks the previous release (a shallow clone). */
export function previousReleaseTest(file: string): typeof test.skip {
  const missing = previousReleaseMissing();
  if (missing) console.warn(`${file} skipped: ${missing}`);
  return missing ? test.skip : test;
}

/** Extracts the previous release; `remove()` deletes it. */
export function extractPreviousRelease(): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'jit-previous-release-'));
  execFileSync('sh', ['-c', `git archive ${PREVIOUS_RELEASE} | tar -x -C "${dir}"`]);
  symlinkSync(resolve('node_modules'), join(dir, 'node_modules'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The config of the previous release for `raw` (testRawConfig): its own policies, without keys it does not know (its schema is strict). */
export function previousReleaseConfig(dir: string, raw: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...raw, policies: join(dir, 'config/policies') };
  delete out.rotation; // rotation.resumeInterruptedSeconds is new
  const providers = raw.providers as { aws?: Record<string, unknown> } | undefined;
  if (providers?.aws) {
    // providers.aws.revocationVerifySeconds is new (the deny list's read-back, src/providers/aws/deny-list.ts).
    const { revocationVerifySeconds: _new, ...aws } = providers.aws;
    out.providers = { ...providers, aws };
  }
  return out;
}

/**
 * One config for both releases (one KEK, one export file, one prefix), written as two files in a fresh directory:
 * `oldFile` the previous release's (previousReleaseConfig: it knows fewer keys), `newFile` this one's.
 */
export function writeReleaseConfigs(
  oldDir: string,
  raw: Record<string, unknown>,
  name: string,
): { dir: string; oldFile: string; newFile: string } {
  const dir = mkdtempSync(join(tmpdir(), `${name}-`));
  const [oldFile, newFile] = [join(dir, 'old.yaml'), join(dir, 'new.yaml')];
  writeFileSync(oldFile, JSON.stringify(previousReleaseConfig(oldDir, raw)));
  writeFileSync(newFile, JSON.stringify(raw));
  return { dir, oldFile, newFile };
}

/** A Lua script's SHA-1 as a tree's src/redis/scripts.ts loads it (the libraries of `-- uses:` prepended). */
export function scriptSha(root: string, name: string): string {
  const dir = join(root, 'src/redis/lua');
  let body = readFileSync(join(dir, `${name}.lua`), 'utf8');
  const uses = /^-- uses: (.+)$/m.exec(body)?.[1]?.split(/[ ,]+/) ?? [];
  for (const lib of uses.reverse()) body = `${readFileSync(join(dir, 'lib', `${lib}.lua`), 'utf8')}\n${body}`;
  return createHash('sha1').update(body).digest('hex');
}
