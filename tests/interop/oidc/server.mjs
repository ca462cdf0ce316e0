// oidc-provider (panva, 9.x) on loopback: the third-party OAuth2 server of tokend's interop tests.
//
//   OIDC_BASIC_SECRET=... OIDC_POST_SECRET=... [OIDC_JWT_JWKS=...] node server.mjs PORT
//
// Issuer http://127.0.0.1:PORT. Confidential clients that may only use client_credentials:
// `tokend-basic` (client_secret_basic), `tokend-post` (client_secret_post) and, when
// OIDC_JWT_JWKS holds a JWK set of public keys, `tokend-jwt` (private_key_jwt, RFC 7523: signed
// client assertions; oidc-provider refuses an assertion whose jti it has seen). Client-credentials
// tokens for RESOURCE are RS256 JWTs (RFC 9068) with aud = RESOURCE, scope api:read, 300 s
// lifetime. Prints `READY <issuer>` on stdout once listening and nothing else on stdout; logs go
// to stderr and never contain a secret or a token. SIGTERM/SIGINT close the listener and exit 0.
// Port 0 picks a free port (the READY line names it).
//
// A development set-up on loopback only: plain http, a signing key generated at start-up and
// dropped at exit, the in-memory adapter. Client authentication is real, and stricter than
// oidc-provider's own (see strictSecretTransport).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import process from 'node:process';

import Provider, { errors } from 'oidc-provider';

const HOST = '127.0.0.1';
const RESOURCE = process.env.OIDC_RESOURCE ?? 'https://api.tokend.test';
const SCOPE = 'api:read';
const ACCESS_TOKEN_TTL = 300;

function log(message) {
  process.stderr.write(`${new Date().toISOString()} oidc-provider: ${message}\n`);
}

function fail(message) {
  process.stderr.write(`server.mjs: ${message}\n`);
  process.exit(2);
}

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) fail(`set ${name} (the client secret to register)`);
  return value;
}

const portText = process.argv[2] ?? process.env.PORT;
if (portText === undefined || !/^\d{1,5}$/.test(portText) || Number(portText) > 65535) {
  fail('usage: node server.mjs PORT (or PORT=... in the environment; 0 picks a free port)');
}
const secrets = {
  basic: requiredEnv('OIDC_BASIC_SECRET'),
  post: requiredEnv('OIDC_POST_SECRET'),
};
const jwtClientKeys = process.env.OIDC_JWT_JWKS ? JSON.parse(process.env.OIDC_JWT_JWKS) : null;

// A fresh RS256 signing key per run, from node:crypto (no dependency beyond oidc-provider).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };

const clientCredentialsOnly = {
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
};

const configuration = {
  clients: [
    {
      ...clientCredentialsOnly,
      client_id: 'tokend-basic',
      client_secret: secrets.basic,
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      ...clientCredentialsOnly,
      client_id: 'tokend-post',
      client_secret: secrets.post,
      token_endpoint_auth_method: 'client_secret_post',
    },
    ...(jwtClientKeys
      ? [
          {
            ...clientCredentialsOnly,
            client_id: 'tokend-jwt',
            token_endpoint_auth_method: 'private_key_jwt',
            jwks: jwtClientKeys,
          },
        ]
      : []),
  ],
  jwks: { keys: [signingKey] },
  // Signs the provider's interaction cookies (unused here; set so no development key is used).
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A token request without resource= gets a token for the API all the same.
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) {
          throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: SCOPE,
          audience: RESOURCE,
          accessTokenTTL: ACCESS_TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  ttl: {
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? ACCESS_TOKEN_TTL,
  },
  // Nobody signs in here.
  findAccount: async () => undefined,
};

// oidc-provider lets a client registered for client_secret_basic send its secret in the form and
// vice versa. Here only the registered method is accepted (as many servers do), so the tests
// prove which one tokend used. The check runs after oidc-provider has authenticated the client
// and answered; a mismatch replaces the answer with an invalid_client error (the token issued
// meanwhile lives only in memory and is never sent).
async function strictSecretTransport(ctx, next) {
  await next();
  if (ctx.oidc?.route !== 'token' || ctx.status !== 200) return;
  const client = ctx.oidc.client;
  const registered = client?.clientAuthMethod;
  if (registered === 'client_secret_basic' || registered === 'client_secret_post') {
    const used = /^basic /i.test(ctx.get('authorization'))
      ? 'client_secret_basic'
      : 'client_secret_post';
    if (used !== registered) {
      log(`token error client=${client.clientId} invalid_client: ${used} used, ${registered} registered`);
      ctx.status = 401;
      ctx.body = {
        error: 'invalid_client',
        error_description: `client authentication must use ${registered}`,
      };
      return;
    }
  }
  log(`token issued client=${client?.clientId}`);
}

// Listen first, so that port 0 works and the issuer names the port actually bound.
const server = createServer((_req, res) => res.writeHead(503).end());
server.on('error', (error) => fail(`cannot listen on ${HOST}:${portText}: ${error.message}`));

server.listen(Number(portText), HOST, () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  const provider = new Provider(issuer, configuration);
  provider.use(strictSecretTransport);
  provider.on('grant.error', (ctx, error) => {
    const client = ctx.oidc?.client?.clientId ?? '?';
    const detail = error.error_detail ? ` (${error.error_detail})` : '';
    log(`token error client=${client} ${error.error}: ${error.error_description}${detail}`);
  });
  provider.on('server_error', (_ctx, error) => log(`server_error ${error.stack}`));

  const handle = provider.callback();
  server.removeAllListeners('request');
  server.on('request', handle);
  process.stdout.write(`READY ${issuer}\n`);
});

function shutDown(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', () => shutDown('SIGTERM'));
process.on('SIGINT', () => shutDown('SIGINT'));
