import type { Account, Principal } from './account.ts';
import { AwsError, validationError } from './errors.ts';

/** Everything an action handler needs; it returns the inner XML of `<Action>Result`, or undefined for none. */
export interface ActionContext {
  account: Account;
  principal: Principal;
  params: Record<string, string>;
  /** Packed-size limit for session policy + tags (emulator knob; AWS does not publish the real one). */
  packedPolicyLimit: number;
  /** Eventual consistency: a key made by CreateAccessKey is invisible for this many requests. */
  keyPropagationDelay: number;
  /** Other accounts whose roles AssumeRole may take (cross-account: `trustAccounts`), by account id. */
  peers?: ReadonlyMap<string, Account>;
}

export type Handler = (ctx: ActionContext) => string | undefined;

/**
 * Rejects parameters the action does not define. Real AWS is lenient here;
 * the emulator is not, so a typo in a request fails a test instead of being
 * silently ignored.
 */
export function onlyParams(action: string, params: Record<string, string>, allowed: RegExp[]): void {
  for (const name of Object.keys(params)) {
    if (name === 'Action' || name === 'Version') continue;
    if (!allowed.some((re) => re.test(name)))
      throw new AwsError('InvalidParameter', 400, `Emulator: ${action} does not take parameter ${name}.`);
  }
}

/** Reads an awsQuery list (`Name.member.N[.Field]`); `Name=` alone is an empty list. */
export function listParam(params: Record<string, string>, name: string): Record<string, string>[] {
  const items = new Map<number, Record<string, string>>();
  for (const [k, v] of Object.entries(params)) {
    const m = new RegExp(`^${name}\\.member\\.(\\d+)(?:\\.(\\w+))?$`).exec(k);
    if (!m) continue;
    const i = Number(m[1]);
    const item = items.get(i) ?? {};
    item[m[2] ?? ''] = v;
    items.set(i, item);
  }
  const indices = [...items.keys()].sort((a, b) => a - b);
  if (indices.some((n, i) => n !== i + 1)) throw new AwsError('InvalidParameter', 400, `Emulator: ${name}.member indices must run 1..N.`);
  return indices.map((i) => items.get(i)!);
}

/** Collects "Value '…' at 'field' failed to satisfy constraint: …" messages in the real wording. */
export class Constraints {
  readonly problems: string[] = [];

  length(field: string, value: string | undefined, min: number, max: number): void {
    if (value === undefined) return;
    if (value.length < min)
      this.problems.push(
        `Value '${value}' at '${field}' failed to satisfy constraint: Member must have length greater than or equal to ${min}`,
      );
    if (value.length > max)
      this.problems.push(
        `Value '${value.slice(0, 80)}' at '${field}' failed to satisfy constraint: Member must have length less than or equal to ${max}`,
      );
  }

  pattern(field: string, value: string | undefined, re: RegExp, shown: string): void {
    if (value !== undefined && !re.test(value))
      this.problems.push(
        `Value '${value.slice(0, 80)}' at '${field}' failed to satisfy constraint: Member must satisfy regular expression pattern: ${shown}`,
      );
  }

  range(field: string, value: number | undefined, min: number, max: number): void {
    if (value === undefined) return;
    if (value < min)
      this.problems.push(
        `Value '${value}' at '${field}' failed to satisfy constraint: Member must have value greater than or equal to ${min}`,
      );
    if (value > max)
      this.problems.push(
        `Value '${value}' at '${field}' failed to satisfy constraint: Member must have value less than or equal to ${max}`,
      );
  }

  required(field: string, value: unknown): void {
    if (value === undefined) this.problems.push(`Value null at '${field}' failed to satisfy constraint: Member must not be null`);
  }

  check(): void {
    if (this.problems.length > 0) throw validationError(this.problems);
  }
}

/** An integer parameter, or a ValidationError naming it. */
export function intParam(params: Record<string, string>, name: string, field: string): number | undefined {
  const v = params[name];
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v)) throw validationError([`Value '${v}' at '${field}' failed to satisfy constraint: Member must be an integer`]);
  return Number(v);
}
