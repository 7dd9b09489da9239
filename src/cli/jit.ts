#!/usr/bin/env node
/**
 * The `jit` command (package.json `bin`). Compiled to JavaScript for Node 20
 * or later, because AWS SDKs run `credential_process` lines with whatever
 * `node` is on PATH.
 */
import { main } from './main.ts';

process.exitCode = await main(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
});
