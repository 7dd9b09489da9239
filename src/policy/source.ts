import type { DetailedError } from '@cedar-policy/cedar-wasm/nodejs';
import type { PolicyIssue, PolicyIssueCode } from './errors.ts';

/**
 * Maps Cedar's source offsets to line and column. Cedar (Rust) counts UTF-8
 * bytes; editors count characters, so the offset is converted through the bytes.
 */
export class SourceText {
  readonly file: string;
  readonly text: string;
  private readonly bytes: Buffer;

  constructor(file: string, text: string) {
    this.file = file;
    this.text = text;
    this.bytes = Buffer.from(text, 'utf8');
  }

  /** 1-based line and column of a byte offset. */
  position(byteOffset: number): { line: number; column: number } {
    const before = this.bytes.subarray(0, Math.max(0, byteOffset)).toString('utf8');
    const lines = before.split('\n');
    return { line: lines.length, column: [...(lines.at(-1) ?? '')].length + 1 };
  }

  /** 1-based line of a character offset (from `String.indexOf`). */
  lineOfCharOffset(charOffset: number): number {
    let line = 1;
    for (let i = 0; i < charOffset; i++) if (this.text.charCodeAt(i) === 10) line++;
    return line;
  }

  /** A Cedar error as an issue located in this file. */
  issue(code: PolicyIssueCode, e: DetailedError, rename: (message: string) => string = (m) => m): PolicyIssue {
    const loc = e.sourceLocations?.[0];
    const { line, column } = loc ? this.position(loc.start) : { line: 0, column: 0 };
    const label = loc?.label ? `: ${loc.label}` : '';
    const help = e.help ? ` (${rename(e.help)})` : '';
    const message = rename(e.message.replace(/^failed to parse policies from string: /, '')) + label + help;
    return { code, file: this.file, line, column, message };
  }
}
