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
};
