import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { script } from '../../src/redis/scripts.ts';
import { REDIS_URL } from '../helpers/broker.ts';

/**
 * Red team: an evidence page merges its tree's audit indexes inside Redis (task-audit-page.lua), and Redis
 * runs one script at a time. The merge parsed and compared the head of every index for every id it took:
 * a tree of 51 tasks (the default tasks.maxSubtasks, all opened by the agent itself) and `limit=500` is
 * 25,500 parses, measured at 17-55 ms of Redis per call (slowlog) on the shared test machine. The task's
 * own agent may read its evidence 50 times a second (its rate limit; concurrentReads bounds only how many
 * run at once), so one agent could keep Redis busy most of every second, for everyone. Heads are now
 * parsed once and kept in a heap: ~4-6 ms on the same machine, the same ids.
 */
let redis: Redis;
const prefix = `rt-merge-${randomBytes(4).toString('hex')}:{t}:`;
const TASKS = 51;
const EACH = 40;
const pageScript = script('task-audit-page');
const keys = Array.from({ length: TASKS }, (_, i) => `${prefix}task-audit:${i}`);
const base = 1_764_000_000_000;
/** Every id of the tree in chain order: index i holds ids i, i + 51, i + 102, ... (ms), and index 0 also holds one of index 1's. */
let all: string[];

beforeAll(async () => {
  redis = new Redis(REDIS_URL);
  for (let i = 0; i < TASKS; i++) {
    const ids = Array.from({ length: EACH }, (_, k) => `${base + k * TASKS + i}-${k % 3}`);
    await redis.rpush(keys[i]!, ...ids);
  }
  // A record about two tasks is in both indexes: listed once.
  const shared = `${base + 5 * TASKS + 1}-${5 % 3}`;
  const zero = await redis.lrange(keys[0]!, 0, -1);
  await redis.del(keys[0]!);
  await redis.rpush(keys[0]!, ...[...zero, shared].sort((a, b) => Number(a.split('-')[0]) - Number(b.split('-')[0])));
  all = [];
  for (const k of keys) all.push(...(await redis.lrange(k, 0, -1)));
  all = [...new Set(all)].sort((a, b) => Number(a.split('-')[0]) - Number(b.split('-')[0]));
});
afterAll(async () => {
  await redis.del(...keys);
  redis.disconnect();
});

const page = async (after: string, count: number) => (await pageScript.run(redis, keys, [after, count])) as [string[], number];

test('pages of the merge hold every id once, in chain order', async () => {
  expect(all).toHaveLength(TASKS * EACH);
  const seen: string[] = [];
  let after = '';
  for (;;) {
    const [ids, more] = await page(after, 37);
    seen.push(...ids);
    if (!more) break;
    after = ids.at(-1)!;
  }
  expect(seen).toEqual(all);
  expect(await page(all[700]!, 500)).toEqual([all.slice(701, 1201), 1]);
  expect(await page(all.at(-2)!, 500)).toEqual([[all.at(-1)], 0]);
  expect(await page(all.at(-1)!, 5)).toEqual([[], 0]);
  expect(await page('0-0', 3)).toEqual([all.slice(0, 3), 1]);
});

/**
 * The script as Redis runs it, with counters in its parse and comparison functions: how much work a page
 * costs, counted, so the verdict does not depend on how busy the machine is (a timing ratio did).
 */
function counted(lua: string): string {
  let body = lua;
  const hooks: Record<string, string> = { parse: 'parses', before: 'compares', less: 'compares' };
  const found: string[] = [];
  for (const [fn, counter] of Object.entries(hooks)) {
    const decl = new RegExp(`^local function ${fn}\\(.*\\)\\n`, 'm');
    if (!decl.test(body)) continue;
    body = body.replace(decl, (line) => `${line}  ${counter} = ${counter} + 1\n`);
    found.push(fn);
  }
  // A renamed function would leave its work uncounted: refuse rather than pass on a count of zero.
  if (!found.includes('parse') || found.length < 2) throw new Error(`task-audit-page.lua: no parse/compare functions to count (${found})`);
  return `local parses, compares = 0, 0\nlocal function page()\n${body}\nend\nlocal r = page()\nreturn { r[1], r[2], parses, compares }\n`;
}

test('a page of 500 from 51 indexes costs about what 500 from one index does, not tens of times more', async () => {
  // Counted, not timed: the old merge parsed and compared every index's head for every id it took
  // (51 x 500 = 25,500 parses and as many comparisons; measured 7-11 times the one-index page's time).
  // Parsing each head once when it becomes the head costs about one parse per id, as from one index,
  // and a heap costs at most 2 comparisons per level of its depth per id taken.
  const one = `${prefix}task-audit:one`;
  await redis.rpush(one, ...all.slice(0, 500));
  const lua = counted(pageScript.lua);
  const work = async (ks: string[]) => {
    const [ids, , parses, compares] = (await redis.eval(lua, ks.length, ...ks, '', 500)) as [string[], number, number, number];
    expect(ids).toEqual(all.slice(0, 500));
    return { parses, compares };
  };
  let tree: { parses: number; compares: number };
  let single: { parses: number; compares: number };
  try {
    tree = await work(keys);
    single = await work([one]);
  } finally {
    await redis.del(one);
  }
  expect(single.parses).toBeGreaterThanOrEqual(500);
  // What one index pays, plus each other index's first head and an id shared by two (measured: 552 against 501;
  // the old merge 25,500).
  expect(tree.parses).toBeLessThanOrEqual(single.parses + 2 * TASKS);
  // measured: 4,834; the old merge 25,000
  expect(tree.compares).toBeLessThanOrEqual(500 * 2 * Math.ceil(Math.log2(TASKS)) + TASKS * 2);
});
