// autocannon ships no types; this is the part the benchmark uses.
declare module 'autocannon' {
  interface Options {
    url: string;
    method?: string;
    connections?: number;
    duration?: number;
    amount?: number;
    overallRate?: number;
    headers?: Record<string, string>;
    body?: string;
  }
  interface Result {
    '2xx': number;
    non2xx: number;
    errors: number;
    latency: { p50: number; p90: number; p99: number; average: number; max: number };
    requests: { average: number; total: number };
  }
  function autocannon(opts: Options): Promise<Result>;
  export default autocannon;
}
