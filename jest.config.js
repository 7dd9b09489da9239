// ESM all the way: jose 6 ships no CommonJS build, so jest runs in its ESM mode
// (node --experimental-vm-modules) and @swc/jest only strips the TypeScript types.
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      {
        jsc: { parser: { syntax: 'typescript' }, target: 'es2023' },
        module: { type: 'es6' },
      },
    ],
  },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // Every response a broker sends in a test is checked against docs/openapi.yaml.
  setupFilesAfterEnv: ['<rootDir>/test/helpers/openapi-setup.ts'],
  testTimeout: 20000,
  maxWorkers: 2,
  // The default reporter, then the slowest suites (where a long CI run's time went).
  reporters: ['default', '<rootDir>/test/helpers/slowest-reporter.js'],
  // How long a worker may take to end once told to (default 500 ms, then "A worker process has failed to exit
  // gracefully and has been force exited"). Measured on a loaded 2-core machine: workers with nothing left
  // running (their 'exit' event came 1-3 ms after jest's request) were still being torn down 500 ms later, as
  // node frees the heap of a natural exit; a 250 MB heap took 1.4 s, 1 GB 6.6 s. A worker that something keeps
  // alive is still force-exited and reported, after this.
  workerGracefulExitTimeout: 10_000,
};
