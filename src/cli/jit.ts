#!/usr/bin/env node
/**
 * The `jit` command (package.json `bin`). Compiled to JavaScript for Node 20
 * or later, because AWS SDKs run `credential_process` lines with whatever
 * `node` is on PATH.
 */
import { main } from './main.ts';

// A reader that stops early (`jit audit export | head -1`) closes the pipe. Node ignores SIGPIPE, so the next
// write fails with EPIPE, an 'error' event that would crash with a stack trace and exit 1 (a broker refusal's
// code). Stop quietly instead, with 141 (128 + SIGPIPE), the status of `cat file | head`'s cat.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(141);
  throw err;
});

process.exitCode = await main(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
});
