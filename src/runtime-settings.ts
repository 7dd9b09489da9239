import { setFlagsFromString } from 'node:v8';

/**
 * V8 and libuv settings for the broker process, applied before anything else is loaded
 * (src/main.ts, which npm start, the Dockerfile and the bench run, imports
 * this first; a process that embeds `startBroker` chooses its own flags).
 *
 * `--no-allocation-site-pretenuring`: V8 watches which allocation sites'
 * objects survive a young-generation GC and, past 85%, allocates that site's
 * objects straight in the old generation. A fresh broker's code is still
 * interpreted, keeps more alive across each scavenge, and some request-path
 * sites (ioredis commands among them) sometimes get tenured then. From then on each such
 * object, dead a millisecond later, still points at the young promise,
 * callbacks and request objects it was handed; the scavenger treats those
 * old-to-young pointers as roots, so every request's objects were promoted
 * and collected only by mark-compacts: ~4 MB promoted per scavenge, GC time
 * ~25 ms/s, a major GC every ~10 s, p99 at 2,000/s 15-20 ms, for the life of
 * the process. Whether it happened depended on timing (2 runs in 5 here); with
 * pretenuring off, 0 in 9 (docs/benchmarks.md, "The tail at 2,000/s").
 * Everything the broker keeps for long (caches, keys, policies) is small, so
 * allocating it young first costs next to nothing.
 */
setFlagsFromString('--no-allocation-site-pretenuring');

/**
 * libuv's thread pool: 2 threads unless UV_THREADPOOL_SIZE says otherwise
 * (read when the pool first starts, which is after this). The pool signs
 * every token (ES256 off the event loop) and writes the audit export. With
 * libuv's default of 4 on two cores, the event loop spent ~16 µs per
 * issuance handing the signature over (waiting on the pool's lock while a
 * worker that held it waited for a core) for ~2.5 µs of work; with 2 it was
 * ~11 µs and 40,000 issuances took 5 s instead of 6 (profile.ts). One thread
 * would leave signatures queued behind an export fsync.
 */
process.env.UV_THREADPOOL_SIZE ??= '2';
