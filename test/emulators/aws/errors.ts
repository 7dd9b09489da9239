/**
 * An error the emulator answers with, in the awsQuery `ErrorResponse` shape.
 * `Type` is derived from the status the way AWS does: Sender for 4xx,
 * Receiver for 5xx.
 */
export class AwsError extends Error {
  readonly code: string;
  readonly status: number;

  constructor(code: string, status: number, message: string) {
    super(message);
    this.name = 'AwsError';
    this.code = code;
    this.status = status;
  }
}

/** Model constraint violations, reported together like real STS/IAM do. */
export function validationError(problems: string[]): AwsError {
  const n = problems.length;
  return new AwsError('ValidationError', 400, `${n} validation error${n === 1 ? '' : 's'} detected: ${problems.join('; ')}`);
}

export const accessDenied = (message: string) => new AwsError('AccessDenied', 403, message);
export const invalidClientTokenId = () =>
  new AwsError('InvalidClientTokenId', 403, 'The security token included in the request is invalid.');
export const malformedPolicy = (message: string) => new AwsError('MalformedPolicyDocument', 400, message);
export const noSuchEntity = (message: string) => new AwsError('NoSuchEntity', 404, message);
