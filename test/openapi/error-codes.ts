import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { ERRORS } from '../../src/errors.ts';
import { REJECTIONS } from '../../src/identity/rejection.ts';
import { OPENAPI_YAML } from '../../src/http/routes/openapi.ts';

/**
 * The enums of docs/openapi.yaml that come from the broker's typed tables, so
 * the document cannot list a code the broker does not have, or miss one:
 * `ErrorCode` (every code of src/errors.ts), `Code<status>` (the codes of one
 * status) and `ProblemReason` (the identity refusal reasons, plus `policy`,
 * which src/authz.ts puts on `policy_denied`).
 *
 * `node test/openapi/error-codes.ts --write` rewrites them in place (the rest
 * of the file, comments included, is left as it is); the test suite fails
 * while the file differs from what this would write.
 */
export function generatedEnums(): Record<string, string[]> {
  const codes = Object.keys(ERRORS) as (keyof typeof ERRORS)[];
  const out: Record<string, string[]> = { ErrorCode: codes };
  for (const status of [...new Set(codes.map((c) => ERRORS[c].status))].sort((a, b) => a - b)) {
    out[`Code${status}`] = codes.filter((c) => ERRORS[c].status === status);
  }
  out.ProblemReason = [...Object.keys(REJECTIONS), 'policy'];
  return out;
}

/** A flow sequence wrapped at 120 columns, continuation lines indented under its key. */
function flowList(values: string[], indent: number, first: number): string {
  const lines: string[] = [];
  let line = '[';
  for (const [i, v] of values.entries()) {
    const item = `${v}${i < values.length - 1 ? ',' : ']'}`;
    if (line !== '[' && (lines.length ? indent : first) + line.length + 1 + item.length > 120) {
      lines.push(line);
      line = item;
    } else line = line === '[' ? `[${item}` : `${line} ${item}`;
  }
  lines.push(line === '[' ? '[]' : line);
  return lines.join(`\n${' '.repeat(indent)}`);
}

/**
 * `text` (docs/openapi.yaml) with the generated enums set from the tables.
 * Only the text of each enum changes; the rest of the file stays as written.
 */
export function withGeneratedEnums(text: string): string {
  const doc = parseDocument(text);
  const edits: { from: number; to: number; text: string }[] = [];
  for (const [name, values] of Object.entries(generatedEnums())) {
    const node = doc.getIn(['components', 'schemas', name, 'enum'], true) as { range?: [number, number, number] } | undefined;
    if (!node?.range) throw new Error(`docs/openapi.yaml: components.schemas.${name} needs an enum (it is generated)`);
    const [from, to] = node.range;
    const lineStart = text.lastIndexOf('\n', from) + 1;
    const keyIndent = /^ */.exec(text.slice(lineStart))![0].length;
    edits.push({ from, to, text: flowList(values, keyIndent + 2, from - lineStart) });
  }
  let out = text;
  for (const e of edits.sort((a, b) => b.from - a.from)) out = out.slice(0, e.from) + e.text + out.slice(e.to);
  return out;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const before = readFileSync(OPENAPI_YAML, 'utf8');
  const after = withGeneratedEnums(before);
  if (process.argv.includes('--write')) {
    writeFileSync(OPENAPI_YAML, after);
    process.stdout.write(before === after ? 'docs/openapi.yaml was up to date\n' : 'docs/openapi.yaml updated\n');
  } else {
    process.stdout.write(before === after ? 'up to date\n' : 'out of date: run with --write\n');
    process.exitCode = before === after ? 0 : 1;
  }
}
