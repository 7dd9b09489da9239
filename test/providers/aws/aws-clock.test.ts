import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { afterEach, describe, expect, it, jest } from '@jest/globals';
import { AwsClock } from '../../../src/providers/aws/aws-clock.ts';
import { boundAnswers } from '../../../src/providers/aws/bounded-answer.ts';

/**
 * AwsClock must bound AWS's time from above: the kill switch's agent cut-off is moved by it (deny-list.ts
 * `onAwsClock`), and a bound below AWS's time moves the cut-off early, sparing the agent's sessions issued just
 * before the kill. The process's clocks are driven by hand here.
 */
let mono = 10_000;
let wall = Date.parse('2026-12-03T21:00:00Z');
afterEach(() => {
  jest.restoreAllMocks();
});

function drive() {
  jest.spyOn(performance, 'now').mockImplementation(() => mono);
  jest.spyOn(Date, 'now').mockImplementation(() => wall);
}

/** An answer sent and answered at once, AWS's clock on the wall clock here. */
function answer(c: AwsClock) {
  c.observe(new Date(wall).toUTCString(), mono);
}

it('stays above AWS’s time across a suspend of the machine, when the monotonic clock stood still (found in review)', () => {
  // Before: the bound was the answer's Date plus the monotonic time since. Linux's monotonic clock does not advance
  // while the machine is suspended (a VM paused, a laptop asleep): after 60 s of it, the old sample said AWS's time
  // was 59 s earlier than it was, and as the tightest it won over every fresh answer for 60 s / 500 ppm (33 h):
  // every agent cut-off in that time moved up to clockSkewSeconds early.
  drive();
  const c = new AwsClock();
  answer(c);
  wall += 60_000; // suspended: the wall clock (set from the RTC on resume) and AWS's moved on, the monotonic one did not
  expect(c.upperNow()).toBeGreaterThanOrEqual(wall);
  answer(c); // a fresh answer after the resume: the bound is tight again
  expect(c.upperNow()).toBeGreaterThanOrEqual(wall);
  expect(c.upperNow()).toBeLessThanOrEqual(wall + 1000);
});

it('is not pulled back by a step back of the wall clock: the monotonic time since still counts', () => {
  drive();
  const c = new AwsClock();
  answer(c);
  mono += 5000;
  const aws = wall + 5000;
  wall -= 3_600_000; // NTP (or `date -s`) steps the process's wall clock back an hour; AWS's does not move
  expect(c.upperNow()).toBeGreaterThanOrEqual(aws);
  expect(c.upperNow()).toBeLessThanOrEqual(aws + 1100);
});

describe('which answers are AWS’s (bounded-answer.ts)', () => {
  /** An STS endpoint answering 500 with a Date an hour behind, and AWS's request id header or not. */
  async function answeredBy(requestId: boolean): Promise<number | undefined> {
    const server = createServer((_req, res) => {
      res.writeHead(500, {
        'content-type': 'text/xml',
        date: new Date(Date.now() - 3_600_000).toUTCString(),
        ...(requestId ? { 'x-amzn-RequestId': 'a0b1c2d3-0000-4000-8000-000000000000' } : {}),
      });
      res.end('<html>upstream error</html>');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    const clock = new AwsClock();
    const sts = new STSClient({
      region: 'us-east-1',
      endpoint: `http://127.0.0.1:${port}`,
      maxAttempts: 1,
      credentials: { accessKeyId: 'AKIAEXAMPLEEXAMPLE00', secretAccessKey: 'x'.repeat(40) },
    });
    boundAnswers(sts, 2000, clock);
    await sts.send(new GetCallerIdentityCommand({})).catch(() => undefined);
    sts.destroy();
    await new Promise((r) => server.close(r));
    return clock.upperNow();
  }

  it('takes the Date of an answer carrying AWS’s request id, and not of one without (a proxy’s error page)', async () => {
    // Before: any answer's Date was taken, and this one an hour behind became the bound.
    expect(await answeredBy(false)).toBeUndefined();
    expect(await answeredBy(true)).toBeLessThan(Date.now() - 3_000_000);
  });
});
