// The authentication options shared by `serve` and `migrate` (docs/security.md).
export const AUTH_OPTIONS = {
  "token-file": { type: "string", arg: "FILE", description: "shared secret (same file on both hosts): peers must prove they hold it" },
  "tls-cert": { type: "string", arg: "FILE", description: "TLS certificate (PEM) of this agent, for the control and the page channel" },
  "tls-key": { type: "string", arg: "FILE", description: "its private key (PEM)" },
  "tls-ca": { type: "string", arg: "FILE", description: "CA (PEM) that must have signed the peer's certificate" },
} as const;
