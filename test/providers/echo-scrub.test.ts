import { scrubEcho } from '../../src/providers/echo-scrub.ts';

/** The one scrubber of failed AWS and Vault answers: what it takes out, and the diagnostics it leaves. */
describe('scrubEcho', () => {
  const token = 'FwoGZXIvYXdzEBY+tok/en=';
  test('a secret the request carried, as written, percent-encoded in either case and form-encoded', () => {
    const lower = encodeURIComponent(token).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
    const text = `a ${token} b ${encodeURIComponent(token)} c ${lower} d ${new URLSearchParams({ t: token })}`;
    expect(scrubEcho(text, [token])).toBe('a [redacted] b [redacted] c [redacted] d t=[redacted]');
  });

  test.each([
    ['Proxy-Authorization: Basic dXNlcjpwYXNz', 'Proxy-Authorization: Basic [redacted]'],
    ['"proxy-authorization":"Bearer eyJhbGciOi.x.y"', '"proxy-authorization":"Bearer [redacted]"'],
    ['Authorization=Basic%20dXNlcjpwYXNz%3D', 'Authorization=Basic%20[redacted]'],
    ['?X-Amz-Security-Token=abc%2fdef&X-Amz-Signature=0a1b&x', '?X-Amz-Security-Token=[redacted]&X-Amz-Signature=[redacted]&x'],
    ['X-Amz-Credential=AKIAXX%2f20261203%2fus-east-1&amp;y', 'X-Amz-Credential=[redacted]&amp;y'],
    ['x-amz-security-token: abc', 'x-amz-security-token: [redacted]'],
    ['"X-Vault-Token":"hvs.abc"', '"X-Vault-Token":"[redacted]"'],
    [
      'Authorization=AWS4-HMAC-SHA256 Credential=AKIAXX/20261203/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0a1b',
      'Authorization=AWS4-HMAC-SHA256 Credential=[redacted], SignedHeaders=host, Signature=[redacted]',
    ],
  ])('a value known by its name, whatever it is: %s', (text, scrubbed) => {
    expect(scrubEcho(text, [])).toBe(scrubbed);
  });

  test.each([
    'The request signature we calculated does not match the signature you provided.',
    "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter.",
    'Proxy Authentication Required: Basic authentication needed',
    'permission denied',
  ])('the diagnostics around them are left: %s', (text) => {
    expect(scrubEcho(text, ['short-but-not-here'])).toBe(text);
  });
});
