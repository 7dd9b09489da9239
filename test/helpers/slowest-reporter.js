// A jest reporter that ends a run with its slowest suites, so a CI log says where the time went (the run's
// length is watched: .ci/run must stay well under 90 minutes, aiming at 20).
const SHOWN = 15;

export default class SlowestReporter {
  onRunComplete(_contexts, results) {
    const suites = results.testResults
      .map((r) => ({ path: r.testFilePath.replace(`${process.cwd()}/`, ''), ms: r.perfStats.end - r.perfStats.start }))
      .filter((s) => Number.isFinite(s.ms) && s.ms > 0)
      .sort((a, b) => b.ms - a.ms);
    if (suites.length === 0) return;
    const total = suites.reduce((n, s) => n + s.ms, 0);
    const lines = suites.slice(0, SHOWN).map((s) => `  ${(s.ms / 1000).toFixed(1).padStart(6)} s  ${s.path}`);
    process.stderr.write(
      `\nSlowest ${Math.min(SHOWN, suites.length)} of ${suites.length} suites (${(total / 1000).toFixed(0)} s of suite time in all):\n${lines.join('\n')}\n`,
    );
  }
}
