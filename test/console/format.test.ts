import { expect, test } from '@jest/globals';
import { formatTtl } from '../../console/src/format.ts';

/**
 * A TTL on an approval card is what an approver decides on: its rounded form ("2 d 0 h", "1 h 0 min") once
 * understated it by up to 59 min 59 s. Where the rounding drops something, the exact seconds are shown too.
 */
test.each([
  [undefined, 'grant default'],
  [60, '1 min 0 s'],
  [3599, '59 min 59 s'],
  [3600, '1 h 0 min'],
  [3601, '1 h 0 min (3,601 s)'],
  [86_400, '24 h 0 min'],
  [172_800, '2 d 0 h'],
  [172_800 + 3599, '2 d 0 h (176,399 s)'],
])('formatTtl(%p) is %p', (seconds, shown) => {
  expect(formatTtl(seconds)).toBe(shown);
});
