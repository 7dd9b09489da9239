import { nextCursorCheck } from '../../client/broker-client.ts';
import type { Page, PageParams } from '../../client/types.ts';
import type { OptionSpecs } from '../args.ts';
import type { Ctx } from '../command.ts';
import type { Out } from '../output.ts';

/** `--limit`, `--cursor` and `--all` of every list command. */
export const listOptions = {
  limit: { type: 'string' },
  cursor: { type: 'string' },
  all: { type: 'boolean' },
} as const satisfies OptionSpecs;

/**
 * One page (`--limit`, `--cursor`), or with `--all` every page. `--json`
 * prints the page as the broker answered it (with `--all`: every item, and
 * `nextCursor: null`); otherwise `render` prints the items and a note says
 * how to get the next page.
 */
export async function printPage<T>(
  ctx: Ctx,
  fetchPage: (page: PageParams) => Promise<Page<T>>,
  render: (out: Out, items: T[]) => void,
): Promise<void> {
  const limit = ctx.flags.int('limit', 1, 500);
  let page: Page<T>;
  if (ctx.flags.bool('all')) {
    const items: T[] = [];
    let cursor = ctx.flags.str('cursor');
    const next = nextCursorCheck();
    next(cursor);
    do {
      const p = await fetchPage({ limit, cursor });
      items.push(...p.items);
      cursor = next(p.nextCursor);
    } while (cursor);
    page = { items, nextCursor: null };
  } else {
    page = await fetchPage({ limit, cursor: ctx.flags.str('cursor') });
  }
  if (ctx.json) {
    ctx.out.json(page);
    return;
  }
  render(ctx.out, page.items);
  if (page.nextCursor) ctx.out.note(`more: add --cursor ${page.nextCursor} (or --all)`);
}
