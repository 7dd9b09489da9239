/**
 * `npm run audit:verify [-- --json] [-- --file <export file>] [-- --max-seal-age <seconds>]`: checks every
 * audit chain of the broker named by BROKER_CONFIG (redis.url, redis.prefix,
 * audit.export.file, secrets.kek, audit.sealMaxAgeSeconds) as one chain made of the export files and
 * what is in Redis. Prints a verdict per chain; exit 0 when every chain is
 * intact, 1 otherwise (records left unsealed for longer than the bound included:
 * they could have been rewritten undetected).
 */
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type ExportEntry, readExportFile } from '../src/audit/export-file.ts';
import { terminalLines } from '../src/cli/terminal.ts';
import { deriveSealKey } from '../src/audit/seal.ts';
import { type ChainReport, type Source, verifyAudit } from '../src/audit/verify.ts';
import { loadConfig, readSecret, resolvePath } from '../src/config/load.ts';
import { silentLogger } from '../src/logger.ts';
import { createConnector } from '../src/redis/connection.ts';
import { Keys } from '../src/redis/keys.ts';

/**
 * Every line it prints, escaped as the `jit` CLI prints (src/cli/terminal.ts): much of it is what the export file
 * and Redis hold (a header's prefix, seal times, a chain head), and whoever can write those is whom this check is
 * for. Raw, an ESC or C1 sequence there moved the cursor over the BROKEN lines and rewrote them. JSON output too:
 * what is escaped reads back as the same JSON value.
 */
const say = (s: string) => console.log(terminalLines(s));
const sayError = (s: string) => console.error(terminalLines(s));

const USAGE = 'usage: npm run audit:verify [-- --json] [-- --file <export file>] [-- --max-seal-age <seconds>]';
let values: { json?: boolean; file?: string; 'max-seal-age'?: string; help?: boolean };
try {
  ({ values } = parseArgs({
    options: {
      json: { type: 'boolean' },
      file: { type: 'string' },
      'max-seal-age': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }));
} catch (err) {
  // A mistyped flag: what was wrong and the usage, not Node's stack trace; exit 1 like every run that verified nothing.
  sayError(`audit:verify: ${(err as Error).message.split('. To specify')[0]}\n${USAGE}`);
  process.exit(1);
}
if (values.help) {
  say(
    `${USAGE}\nChecks every audit chain as one chain made of the export files and what is in Redis (BROKER_CONFIG names the\nbroker's config). Exit 0 when every chain is intact, 1 otherwise.`,
  );
  process.exit(0);
}
let ok = false;
try {
  ok = await main();
} catch (err) {
  sayError(`audit:verify: ${(err as Error).message}`);
}
process.exit(ok ? 0 : 1);

async function main(): Promise<boolean> {
  const config = loadConfig();
  // The same connection code as the broker: one node, a Cluster or Sentinel.
  const conns = createConnector(config.redis, { logger: silentLogger });
  const redis = conns.command('jit-audit-verify');
  // The bucket count the data was written with (the broker records it), so bucket chains are found.
  const buckets = Number(await redis.hget(new Keys(config.redis.prefix).meta(), 'buckets')) || undefined;
  const keys = new Keys(config.redis.prefix, buckets);
  const file = resolvePath(values.file ?? config.audit.export.file);
  // A file named on the command line must exist: a mistyped archive path would otherwise "verify" as an
  // intact, empty export. (The configured one may not exist yet: a broker that never exported.)
  if (values.file !== undefined && !existsSync(file)) throw new Error(`no such export file: ${file}`);
  // Nor may it be some other file: its lines would be skipped with a warning and the chains "verified" from Redis alone.
  if (values.file !== undefined) await checkHeader(file, config.redis.prefix);

  let sealKey: Buffer | undefined;
  let kekNote: string;
  if (config.secrets.kek) {
    sealKey = deriveSealKey(readSecret(config.secrets.kek, 'secrets.kek'));
    kekNote = 'seals checked with the key derived from secrets.kek';
  } else {
    const inRedis = await redis.get(keys.secrets('kek'));
    if (inRedis) {
      sealKey = deriveSealKey(inRedis);
      kekNote =
        'secrets.kek is not set: the KEK lives in Redis, so seals were checked with it, but they prove nothing ' +
        'against anyone who can read Redis (they could forge them). Set secrets.kek in production.';
    } else {
      kekNote = 'seals not checked: no KEK (secrets.kek is not set and Redis holds none)';
    }
  }

  const maxSealAgeS = values['max-seal-age'] === undefined ? config.audit.sealMaxAgeSeconds : Number(values['max-seal-age']);
  if (!Number.isSafeInteger(maxSealAgeS) || maxSealAgeS < 1)
    throw new Error(`--max-seal-age must be a whole number of seconds (at least 1), not "${values['max-seal-age']}"`);
  // Seals carry Redis's clock: their age is measured on it, not on this host's.
  const [s, us] = await redis.time();
  const now = Number(s) * 1000 + Math.floor(Number(us) / 1000);
  const reports = await verifyAudit(redis, keys, {
    exportFile: file,
    ...(sealKey ? { sealKey } : {}),
    maxSealAgeMs: maxSealAgeS * 1000,
    now,
  });
  await conns.close();
  const ok = reports.every((r) => r.ok);

  if (values.json) {
    say(JSON.stringify({ ok, exportFile: file, seals: kekNote, maxSealAgeSeconds: maxSealAgeS, chains: reports }, null, 2));
  } else {
    say(`audit export: ${file}`);
    say(kekNote);
    const empty = reports.filter((r) => r.records === 0 && r.ok && r.warnings.length === 0);
    for (const r of reports) if (!empty.includes(r)) print(r);
    if (empty.length > 0) say(`${empty.length} chain(s) have no records: ${empty.map((r) => r.chain).join(', ')}`);
    say(ok ? 'every chain is intact' : 'BROKEN: see above');
  }
  return ok;
}

/**
 * A file named with --file must start as the broker writes every export file: the jit-broker header naming
 * this deployment's prefix. (`jit audit export` output is the API's records, not an export file.)
 */
async function checkHeader(file: string, prefix: string): Promise<void> {
  let first: ExportEntry | undefined;
  for await (const e of readExportFile(file)) {
    first = e;
    break;
  }
  if (first?.kind !== 'header')
    throw new Error(
      `${file} is not a broker audit export: its first line is not the jit-broker header (a \`jit audit export\` file is ` +
        "not one: it holds the API's records; name the broker's audit.export.file or an archived copy of it)",
    );
  if (first.prefix !== prefix)
    throw new Error(`${file} is the export of redis.prefix "${first.prefix}", not "${prefix}": BROKER_CONFIG names another deployment`);
}

function where(at: Source): string {
  return at.in === 'file' ? `${at.file}:${at.line}` : at.streamId ? `Redis stream id ${at.streamId}` : `Redis ${at.key}`;
}

function print(r: ChainReport): void {
  const span =
    r.firstSeq === undefined ? '' : ` (seq ${r.firstSeq}..${r.lastSeq}; ${r.fromFile} from the export, ${r.fromRedis} only in Redis)`;
  say(`chain ${r.chain}: ${r.ok ? 'intact' : 'BROKEN'}, ${r.records} records${span}, head ${r.head || '(none)'}`);
  for (const p of r.problems) say(`  ${p.seq === undefined ? '' : `seq ${p.seq}: `}${p.problem} [${where(p.at)}]`);
  if (r.seals.last)
    say(`  last seal: seq ${r.seals.last.seq} at ${r.seals.last.time} (${r.seals.count} seals${r.seals.checked ? '' : ', not checked'})`);
  else if (r.records > 0) say('  no seal yet');
  if (r.unsealed > 0)
    say(
      `  ${r.unsealed} record(s) after the last seal are unsealed${r.unsealedSince ? ` (since ${r.unsealedSince})` : ''}: not yet provable` +
        (r.sealAgeSeconds === undefined ? '' : `; no seal for ${r.sealAgeSeconds} s`),
    );
  for (const l of r.losses) {
    const lost =
      l.lostFromSeq !== undefined && l.lostToSeq !== undefined
        ? `records ${l.lostFromSeq}..${l.lostToSeq} (at least) were lost with Redis's data`
        : 'no lost record is known (any written after the last export were lost)';
    say(`  data loss recorded at seq ${l.seq} (${l.time}): the chain continues from seq ${l.continuedFromSeq}; ${lost}`);
  }
  for (const w of r.warnings) say(`  warning: ${w}`);
}
