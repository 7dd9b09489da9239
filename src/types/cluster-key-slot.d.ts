// cluster-key-slot (a dependency of ioredis) ships no types.
declare module 'cluster-key-slot' {
  /** Redis Cluster hash slot (0..16383) of a key, honouring `{hash tags}`. */
  export default function calculateSlot(key: string | Buffer): number;
  /** The common slot of all keys, or -1 when they differ. */
  export function generateMulti(keys: (string | Buffer)[]): number;
}
