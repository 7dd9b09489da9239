import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  policySetTextToParts,
  policyToJson,
  validate,
  type PolicyJson,
  type SchemaJson,
  type ValidationError,
} from '@cedar-policy/cedar-wasm/nodejs';
import { PolicyLoadError, formatIssue, type PolicyIssue } from './errors.ts';
import { firstNonNfcLiteral } from './nfc-literals.ts';
import { actionsOf, attributePaths, resourceOf, type AttrPath } from './policy-ast.ts';
import { buildSchemas, openMapNames } from './schema.ts';
import { SourceText } from './source.ts';
import type { PolicyAction } from './types.ts';

/** One policy of a loaded set, with where it came from. */
export interface LoadedPolicy {
  /** The `@id("...")` annotation, or `<file>:<index>` (index from 0 in file order). */
  readonly id: string;
  /** File name inside the policy directory. */
  readonly file: string;
  /** 1-based line where the policy (with its annotations) starts. */
  readonly line: number;
  readonly effect: 'permit' | 'forbid';
  /** The policy's source text, as written. */
  readonly text: string;
  /** Actions the policy's scope admits. */
  readonly actions: readonly PolicyAction[];
  /** `Type::"id"` when the scope is `resource == Type::"id"`. */
  readonly resource: string | undefined;
  /** Attribute paths its conditions read. */
  readonly paths: readonly AttrPath[];
}

/** A parsed and validated policy directory. Immutable; pure data (nothing is cached in Cedar yet). */
export interface LoadedPolicySet {
  readonly dir: string;
  /** SHA-256 over the file names and contents: which policy set an instance runs. */
  readonly version: string;
  readonly files: readonly string[];
  readonly policies: readonly LoadedPolicy[];
  /** Validation findings that do not refuse the set (e.g. an optional attribute read without `has`). */
  readonly warnings: readonly string[];
}

interface ParsedFile {
  source: SourceText;
  name: string;
  policies: LoadedPolicy[];
}

/**
 * Reads every `*.cedar` file of `dir` (sorted by name; hidden files and
 * sub-directories are ignored), parses and validates them against the
 * broker's schema. Throws {@link PolicyLoadError} naming file, line and
 * Cedar's message for everything wrong. Usable without a running broker.
 */
export async function loadPolicySet(dir: string): Promise<LoadedPolicySet> {
  const names = await listPolicyFiles(dir);
  const hash = createHash('sha256');
  const issues: PolicyIssue[] = [];
  const files: ParsedFile[] = [];
  for (const name of names) {
    const text = await readFile(join(dir, name), 'utf8');
    hash.update(name).update('\0').update(text).update('\0');
    const source = new SourceText(join(dir, name), text);
    files.push({ source, name, policies: parseFile(source, name, issues) });
  }
  if (issues.length > 0) throw new PolicyLoadError(issues);

  const policies = files.flatMap((f) => f.policies);
  checkUniqueIds(files, issues);
  const warnings = validateFiles(files, policies, issues);
  if (issues.length > 0) throw new PolicyLoadError(issues);
  return Object.freeze({
    dir,
    version: hash.digest('hex'),
    files: Object.freeze(names),
    policies: Object.freeze(policies.map((p) => Object.freeze(p))),
    warnings: Object.freeze(warnings),
  });
}

async function listPolicyFiles(dir: string): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (err) {
    throw new PolicyLoadError([
      { code: 'ERR_POLICY_DIR', file: dir, line: 0, column: 0, message: `cannot read the policy directory: ${(err as Error).message}` },
    ]);
  }
  const names: string[] = [];
  for (const name of entries.sort()) {
    // Stat, not the dirent type: in a Kubernetes ConfigMap every file is a symlink.
    if (name.startsWith('.') || !name.endsWith('.cedar')) continue;
    if ((await stat(join(dir, name))).isFile()) names.push(name);
  }
  return names;
}

function parseFile(source: SourceText, name: string, issues: PolicyIssue[]): LoadedPolicy[] {
  const parts = policySetTextToParts(source.text);
  if (parts.type === 'failure') {
    for (const e of parts.errors) issues.push(source.issue('ERR_POLICY_PARSE', e));
    return [];
  }
  for (const t of parts.policy_templates) {
    const at = source.text.indexOf(t);
    issues.push({
      code: 'ERR_POLICY_TEMPLATE',
      file: source.file,
      line: at >= 0 ? source.lineOfCharOffset(at) : 0,
      column: 1,
      message: 'policy templates (?principal, ?resource) are not supported',
    });
  }
  if (parts.policy_templates.length > 0) return [];
  // Cedar returns the policies' own text sorted by its ids; put them back in
  // file order by where each text occurs (identical policies take successive occurrences).
  const used = new Set<number>();
  const located = parts.policies
    .map((text) => {
      let at = source.text.indexOf(text);
      while (at >= 0 && used.has(at)) at = source.text.indexOf(text, at + 1);
      used.add(at);
      return { text, at };
    })
    .sort((a, b) => a.at - b.at);

  return located.map(({ text, at }, index) => {
    const answer = policyToJson(text);
    if (answer.type === 'failure')
      throw new Error(`${source.file}: Cedar could not convert a policy it parsed: ${answer.errors[0]?.message}`);
    const json: PolicyJson = answer.json;
    const annotated = json.annotations?.id;
    const line = at >= 0 ? source.lineOfCharOffset(at) : 0;
    const nonNfc = firstNonNfcLiteral(json);
    if (nonNfc !== undefined) {
      const lit = at >= 0 ? source.text.indexOf(`"${nonNfc}`, at) : -1;
      issues.push({
        code: 'ERR_POLICY_NOT_NFC',
        file: source.file,
        line: lit >= 0 ? source.lineOfCharOffset(lit) : line,
        column: 1,
        message:
          `the string ${JSON.stringify(nonNfc)} is not in Unicode NFC: tenants, purposes, label values and claims ` +
          'are compared in NFC, so it could never match (a forbid would never apply); write it composed (NFC)',
      });
    }
    return {
      id: annotated ?? `${name}:${index}`,
      file: name,
      line,
      effect: json.effect,
      text,
      actions: actionsOf(json),
      resource: resourceOf(json),
      paths: attributePaths(json),
    };
  });
}

function checkUniqueIds(files: ParsedFile[], issues: PolicyIssue[]): void {
  const seen = new Map<string, string>();
  for (const f of files) {
    for (const p of f.policies) {
      const where = `${f.source.file}:${p.line}`;
      const first = seen.get(p.id);
      if (first)
        issues.push({
          code: 'ERR_POLICY_DUPLICATE_ID',
          file: f.source.file,
          line: p.line,
          column: 1,
          message: `policy id "${p.id}" is already used at ${first}`,
        });
      else seen.set(p.id, where);
    }
  }
}

/** Validates each file on its own so Cedar's offsets are offsets into that file. Returns the warnings. */
function validateFiles(files: ParsedFile[], policies: LoadedPolicy[], issues: PolicyIssue[]): string[] {
  const { strict, lenient } = buildSchemas(openMapNames(policies.flatMap((p) => p.paths)));
  const warnings: string[] = [];
  for (const f of files) {
    if (f.policies.length === 0) continue;
    // Cedar names the policies of one text policy0, policy1, ... in file order: show ours instead.
    const rename = (m: string) =>
      m.replace(/`policy(\d+)`/g, (all, n: string) => {
        const p = f.policies[Number(n)];
        return p ? `\`${p.id}\`` : all;
      });
    const hard = runValidator(lenient, f.source.text, f.source.file);
    issues.push(...onePerPlace(hard.errors.map((e) => f.source.issue('ERR_POLICY_VALIDATION', e.error, rename))));
    const soft = runValidator(strict, f.source.text, f.source.file);
    const hardKeys = new Set(hard.errors.map(key));
    const softIssues = [...soft.errors.filter((x) => !hardKeys.has(key(x))), ...soft.warnings].map((e) =>
      f.source.issue('ERR_POLICY_VALIDATION', e.error, rename),
    );
    warnings.push(...onePerPlace(softIssues).map(formatIssue));
  }
  return warnings;
}

/**
 * Cedar validates a policy once per action it may apply to, so one mistake in
 * a policy for every action comes back five times, differing only in the action.
 */
function onePerPlace(issues: PolicyIssue[]): PolicyIssue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const k = `${i.line}:${i.column}:${i.message.replace(/Action::"[^"]*"/g, 'Action')}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

const key = (e: ValidationError) => `${e.policyId}\0${e.error.message}`;

function runValidator(schema: SchemaJson<string>, text: string, file: string): { errors: ValidationError[]; warnings: ValidationError[] } {
  const answer = validate({ schema, policies: { staticPolicies: text }, validationSettings: { mode: 'strict' } });
  if (answer.type === 'failure') {
    throw new PolicyLoadError(
      answer.errors.map((e) => ({ code: 'ERR_POLICY_SCHEMA' as const, file, line: 0, column: 0, message: e.message })),
    );
  }
  return { errors: answer.validationErrors, warnings: answer.validationWarnings };
}
