/** Stable codes for why a policy set was refused. */
export type PolicyIssueCode =
  | 'ERR_POLICY_DIR'
  | 'ERR_POLICY_PARSE'
  | 'ERR_POLICY_VALIDATION'
  | 'ERR_POLICY_DUPLICATE_ID'
  | 'ERR_POLICY_TEMPLATE'
  | 'ERR_POLICY_NOT_NFC'
  | 'ERR_POLICY_SCHEMA';

/** One problem in a policy set, located in its file. */
export interface PolicyIssue {
  code: PolicyIssueCode;
  /** The file as the operator named it (policy directory joined with the file name). */
  file: string;
  /** 1-based line and column; 0 when Cedar gave no location. */
  line: number;
  column: number;
  /** Cedar's message (with its hint, when it gave one). */
  message: string;
}

/** `file:line:column: message`, the format editors and CI logs link. */
export function formatIssue(i: PolicyIssue): string {
  return i.line > 0 ? `${i.file}:${i.line}:${i.column}: ${i.message}` : `${i.file}: ${i.message}`;
}

/**
 * A policy set that cannot be used: it does not parse, does not validate
 * against the schema, or its directory cannot be read. The message lists every
 * issue as `file:line:column: message`; `code` is the first issue's code.
 */
export class PolicyLoadError extends Error {
  readonly code: PolicyIssueCode;
  readonly issues: readonly PolicyIssue[];

  constructor(issues: readonly PolicyIssue[]) {
    const [first] = issues;
    if (!first) throw new TypeError('PolicyLoadError needs at least one issue');
    super(issues.map(formatIssue).join('\n'));
    this.name = 'PolicyLoadError';
    this.code = first.code;
    this.issues = issues;
  }
}
