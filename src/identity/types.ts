/** A verified workload identity: what the caller proved it is. */
export interface WorkloadIdentity {
  /** Identity string: the SPIFFE ID, or `<issuer>#<sub>` for OIDC. */
  id: string;
  /** Name of the trust entry that verified it. */
  trust: string;
  kind: 'spiffe' | 'oidc';
  /** String-valued claims of the token, for policy (`principal.claims`). */
  claims: Record<string, string>;
  /** Token expiry (epoch seconds). */
  exp: number;
}
