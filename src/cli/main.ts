import { ApprovalPendingError, BrokerResponseError, BrokerUnreachableError, ClientConfigError, JitError } from '../client/errors.ts';
import { GLOBAL_OPTIONS, parseFlags, UsageError } from './args.ts';
import { type Command, makeCtx } from './command.ts';
import { adminQuarantine, adminReloadPolicy, adminRevoke, adminRotate, adminUnquarantine } from './commands/admin.ts';
import { approvalsApprove, approvalsList, approvalsReject, approvalsShow } from './commands/approvals.ts';
import { auditExport, auditQuery, auditTail, auditVerify } from './commands/audit.ts';
import { credGet } from './commands/cred.ts';
import { devToken } from './commands/dev.ts';
import { exec } from './commands/exec.ts';
import { leaseRevoke, leaseShow } from './commands/lease.ts';
import { taskComplete, taskEvidence, taskLeases, taskList, taskOpen, taskShow } from './commands/task.ts';
import type { Io } from './output.ts';
import { packageVersion } from './package.ts';
import { terminalLines, terminalSafe } from './terminal.ts';
import { identityOf, WHO_MATTERS } from './who.ts';

/** Exit codes of contract section 9. */
export const EXIT = { ok: 0, refused: 1, usage: 2, failed: 3 } as const;

export const COMMANDS: Command[] = [
  devToken,
  taskOpen,
  taskShow,
  taskComplete,
  taskList,
  taskEvidence,
  taskLeases,
  credGet,
  exec,
  leaseShow,
  leaseRevoke,
  approvalsList,
  approvalsShow,
  approvalsApprove,
  approvalsReject,
  adminRevoke,
  adminQuarantine,
  adminUnquarantine,
  adminRotate,
  adminReloadPolicy,
  auditQuery,
  auditTail,
  auditVerify,
  auditExport,
];

const ENVIRONMENT = `Environment:
  JIT_BROKER_URL   the broker (default http://127.0.0.1:8080); --broker URL overrides it
  JIT_TOKEN        your workload identity (a JWT)
  JIT_TOKEN_FILE   a file holding it, re-read on every request (JIT_TOKEN wins if both are set;
                   --token-file PATH overrides both)
  JIT_DEV_DIR      where \`jit dev token\` finds dev-signer.private.jwk (default ./dev, then the checkout's dev/)

Flags on every command (also before it): --json (machine-readable output on stdout), --broker URL, --token-file PATH, --help
Exit codes: 0 success, 1 refused (4xx, a pending approval, a broken audit chain), 2 bad usage,
            3 the broker or an upstream failed (5xx, no answer); \`jit exec\` exits with its command's code`;

function help(commands: Command[] = COMMANDS): string {
  return `jit ${packageVersion()}: the jit-broker command line

${commands.map((c) => `  ${c.usage}\n      ${c.summary}`).join('\n')}

${ENVIRONMENT}
`;
}

/** Finds the command named by the leading words of argv. */
function select(argv: string[]): { cmd: Command | undefined; rest: string[]; group: Command[] } {
  const words = argv.slice(0, 2);
  for (const c of COMMANDS) if (c.path.every((p, i) => words[i] === p)) return { cmd: c, rest: argv.slice(c.path.length), group: [c] };
  const group = COMMANDS.filter((c) => c.path[0] === argv[0]);
  return { cmd: undefined, rest: argv.slice(1), group };
}

/** Runs `jit` with `argv` (without node and the script); resolves to the exit code. */
export async function main(argv: string[], io: Io): Promise<number> {
  // Everything after the first `--` belongs to `jit exec`'s command.
  const dd = argv.indexOf('--');
  const own = hoistGlobalFlags(dd < 0 ? argv : argv.slice(0, dd));
  const after = dd < 0 ? [] : argv.slice(dd + 1);
  if (own.length === 0 || own[0] === 'help' || own[0] === '--help' || own[0] === '-h') {
    io.stdout.write(help());
    return own.length === 0 ? EXIT.usage : EXIT.ok;
  }
  if (own[0] === '--version' || own[0] === 'version') {
    io.stdout.write(`${packageVersion()}\n`);
    return EXIT.ok;
  }
  const { cmd, rest, group } = select(own);
  const json = own.includes('--json');
  let tokenFile: string | undefined;
  try {
    if (!cmd) {
      // A group without its subcommand (`jit task`, `jit task --json`): what follows the group, if anything, is flags.
      if (group.length > 0 && (rest.length === 0 || rest[0]!.startsWith('-'))) {
        if (rest.includes('--help') || rest.includes('-h')) {
          io.stdout.write(help(group));
          return EXIT.ok;
        }
        const subcommands = group.map((c) => c.path[1]).join(', ');
        throw new UsageError(`"jit ${own[0]}" needs a subcommand: ${subcommands}`, group.map((c) => c.usage).join('\n       '));
      }
      const what = group.length > 0 ? `${own[0]} ${rest[0]}` : own[0];
      throw new UsageError(`unknown command "${what}"; \`jit --help\` lists them`);
    }
    if (after.length > 0 && !cmd.takesRest) throw new UsageError(`unexpected arguments after --`, cmd.usage);
    const { values, positionals } = parseFlags(rest, cmd.options, cmd.usage);
    if (typeof values['token-file'] === 'string') tokenFile = values['token-file'];
    if (values.help) {
      io.stdout.write(help([cmd]));
      return EXIT.ok;
    }
    const ctx = makeCtx(cmd, io, values, positionals, after);
    return (await cmd.run(ctx)) ?? EXIT.ok;
  } catch (err) {
    // Errors from argument helpers do not know which command they serve.
    if (err instanceof UsageError && !err.usage && cmd) return report(new UsageError(err.message, cmd.usage), io, json);
    const who = err instanceof BrokerResponseError && WHO_MATTERS.has(err.code) ? await identityOf(tokenFile, io.env) : undefined;
    return report(err, io, json, who);
  }
}

/**
 * Flags every command takes may also come before the command (`jit --json task show ID`, as with
 * most CLIs) or between a group and its subcommand (`jit task --json show ID`): they are moved behind
 * the command words, where the command's parser reads them.
 */
function hoistGlobalFlags(argv: string[]): string[] {
  const hoisted: string[] = [];
  /** Moves the global flags from `start` on into `hoisted`; answers the index of the first other word. */
  const take = (start: number): number => {
    let i = start;
    for (; i < argv.length; i++) {
      const a = argv[i]!;
      const name = /^--([a-z-]+)(?:=|$)/.exec(a)?.[1];
      const spec = name && name !== 'help' ? GLOBAL_OPTIONS[name as keyof typeof GLOBAL_OPTIONS] : undefined;
      if (!spec) break;
      hoisted.push(a);
      if (spec.type === 'string' && !a.includes('=') && i + 1 < argv.length) hoisted.push(argv[++i]!);
    }
    return i;
  };
  const i = take(0);
  let rest = argv.slice(i);
  // And between a group and its subcommand (`jit task --json show ID`, `jit task --json`).
  const group = rest[0];
  if (group !== undefined && isGroup(group)) {
    const j = take(i + 1);
    if (j > i + 1) rest = [group, ...argv.slice(j)];
  }
  if (hoisted.length === 0) return argv;
  // The command words (one or two, e.g. `task show`, `exec`) stay first; the flags follow them.
  const words = rest.findIndex((w) => w.startsWith('-'));
  const cut = Math.min(words < 0 ? rest.length : words, 2);
  return [...rest.slice(0, cut), ...hoisted, ...rest.slice(cut)];
}

/** A word naming commands only together with a second one (`task`, `audit`), not a command itself (`exec`). */
function isGroup(word: string): boolean {
  return COMMANDS.some((c) => c.path.length > 1 && c.path[0] === word) && !COMMANDS.some((c) => c.path.length === 1 && c.path[0] === word);
}

/** What to do next, for the refusals a person at the terminal meets most. */
const NEXT_STEP: Record<string, string> = {
  identity_expired: ' (get a fresh identity token; in development: `jit dev token --sub <identity>`)',
  identity_quarantined: ' (an admin lifts it with `jit admin unquarantine <pattern>`; `jit admin quarantine --list` shows the patterns)',
  audit_task_required: ' (give --task <taskId>: only admins read the whole log)',
};

/**
 * Prints an error (short, on stderr; with --json also as JSON on stdout) and answers its exit code. `who`: the
 * identity the caller's token is for, named on the refusals that depend on it.
 */
function report(err: unknown, io: Io, json: boolean, who?: string): number {
  let code: number;
  let body: unknown;
  let message: string;
  if (err instanceof UsageError) {
    code = EXIT.usage;
    message = err.usage ? `${err.message}\nusage: ${err.usage}` : err.message;
    body = { code: 'usage', detail: err.message };
  } else if (err instanceof BrokerResponseError) {
    code = err.status >= 400 && err.status < 500 ? EXIT.refused : EXIT.failed;
    // The broker's `detail` may quote what a caller sent: escaped like every table cell (terminal.ts).
    message =
      terminalSafe(err.message) +
      (NEXT_STEP[err.code] ?? '') +
      (who ? ` (you are ${terminalSafe(who)}: JIT_TOKEN or --token-file sets who you are)` : '');
    body = err.body && typeof err.body === 'object' ? err.body : { status: err.status, code: err.code, detail: err.detail };
  } else if (err instanceof ApprovalPendingError) {
    code = EXIT.refused;
    message = `${err.message}: an approver runs \`jit approvals approve ${err.approvalId}\`; then run this again (or add --wait)`;
    body = { approvalId: err.approvalId, status: 'pending' };
  } else if (err instanceof BrokerUnreachableError) {
    code = EXIT.failed;
    message = `${err.message} (is the broker running? \`npm start\` runs one; JIT_BROKER_URL names it)`;
    body = { code: err.code, detail: err.message };
  } else if (err instanceof ClientConfigError || err instanceof JitError) {
    code = EXIT.usage;
    message = err.message;
    body = { code: err.code, detail: err.message };
  } else {
    code = EXIT.failed;
    message = `unexpected error: ${err instanceof Error ? (io.env.JIT_DEBUG ? err.stack : err.message) : String(err)}`;
    body = { code: 'internal', detail: message };
  }
  io.stderr.write(`jit: ${terminalLines(message)}\n`);
  if (json) io.stdout.write(`${terminalLines(JSON.stringify(body, null, 2))}\n`);
  return code;
}
