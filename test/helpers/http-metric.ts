/**
 * How many requests `GET /metrics` of the broker at `url` says were answered with `route` and `status`
 * (the count of `jit_http_request_duration_seconds`), 0 while there is no such series yet.
 */
export async function httpRequestCount(url: string, route: string, status: number): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text
    .split('\n')
    .find(
      (l) => l.startsWith('jit_http_request_duration_seconds_count{') && l.includes(`route="${route}"`) && l.includes(`status="${status}"`),
    );
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}
