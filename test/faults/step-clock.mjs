// Preloaded with `node --import` into a broker process whose wall clock is JIT_TEST_CLOCK_SKEW_MS off (a VM
// whose NTP broke) until the process gets SIGUSR2, when it steps to the right time (NTP back, chrony's makestep,
// an operator's `date -s`): Date.now() and new Date() jump, as a real step moves them; the monotonic clock
// (performance.now(), process.hrtime) does not. Prints "clock stepped" once it has. Redis's clock is untouched.
let skew = Number(process.env.JIT_TEST_CLOCK_SKEW_MS ?? 0);
const RealDate = Date;
const realNow = RealDate.now.bind(RealDate);
class SteppedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(realNow() + skew);
    else super(...args);
  }
  static now() {
    return realNow() + skew;
  }
}
globalThis.Date = SteppedDate;
process.on('SIGUSR2', () => {
  skew = 0;
  process.stdout.write('clock stepped\n');
});
