import { expect, test } from '@jest/globals';
import { startTestBroker } from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { awsForBroker, ROTATABLE } from '../providers/aws/helpers.ts';

/**
 * close() stopped every timer of the broker but the worker's look for unfinished rotations
 * (RotationResume, every `rotation.resumeInterruptedSeconds`): it went on after close, each pass a Redis
 * command on a closed connection ("Connection is closed.", logged as a failed look) for as long as the
 * process lived. Its stop() ran only when startup failed part-way.
 */
test('close() stops the look for unfinished rotations', async () => {
  const aws = await awsForBroker();
  const { logger, lines } = capturingLogger<{ msg: string; err?: string }>();
  try {
    const t = await startTestBroker('resume-close', {
      config: {
        providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
        roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
        rotation: { resumeInterruptedSeconds: 1 },
      },
      broker: { logger },
    });
    await t.close();
    const closedAt = lines.length;
    await new Promise((r) => setTimeout(r, 2500));
    expect(lines.slice(closedAt).filter((l) => l.msg.startsWith('rotation:'))).toEqual([]);
  } finally {
    await aws.emu.stop();
  }
}, 30_000);
