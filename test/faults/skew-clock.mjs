// Preloaded with `node --import` into a broker process to make its clock wrong by
// JIT_TEST_CLOCK_SKEW_MS (a VM whose NTP broke): Date.now() and new Date() are off,
// as everything a process reads its wall clock from. Redis's clock is untouched.
const skew = Number(process.env.JIT_TEST_CLOCK_SKEW_MS ?? 0);
const RealDate = Date;
const realNow = RealDate.now.bind(RealDate);
class SkewedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(realNow() + skew);
    else super(...args);
  }
  static now() {
    return realNow() + skew;
  }
}
globalThis.Date = SkewedDate;
