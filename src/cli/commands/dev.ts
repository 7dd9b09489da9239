import type { Command } from '../command.ts';
import { devSpiffeId, findDevSigner, signDevIdentity } from '../dev-identity.ts';

export const devToken: Command = {
  path: ['dev', 'token'],
  usage: 'jit dev token --sub <identity> [--ttl 1h] [--aud jit-broker]',
  summary:
    'a workload identity (JWT-SVID) for the dev trust domain that `npm start` generates (dev only); ' +
    '--sub is a spiffe://dev.local/... ID or just its path',
  options: { sub: { type: 'string' }, ttl: { type: 'string' }, aud: { type: 'string' } },
  async run({ flags, io, out, json }) {
    const sub = devSpiffeId(flags.required('sub'));
    const ttlSeconds = flags.seconds('ttl') ?? 3600;
    const signerFile = findDevSigner(io.env, io.cwd);
    const id = await signDevIdentity({ sub, signerFile, ttlSeconds, audience: flags.str('aud') });
    if (json) out.json(id);
    else out.line(id.token);
    return 0;
  },
};
