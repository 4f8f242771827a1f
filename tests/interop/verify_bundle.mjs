#!/usr/bin/env node
// Verifies a Bulwark Sigstore bundle (`provenance.sigstore.json`) offline with @sigstore/verify
// and the runner's public key.
//
//   node verify_bundle.mjs BUNDLE_JSON PUBKEY_PEM
//
// The packages are loaded from $BULWARK_INTEROP_DIR/node (default /opt/bulwark-interop/node,
// installed by tests/interop/setup.sh), else from node_modules beside this script.
//
// What it does, with the packages' own API:
//   bundleFromJSON(json)                 @sigstore/bundle: parse the bundle (v0.3 public-key
//                                        bundles included), then assertBundleLatest (v0.2+ rules)
//   toSignedEntity(bundle)               @sigstore/verify: no artifact argument (DSSE: the
//                                        signed content is the envelope's own payload)
//   toTrustMaterial(root, {[hint]: key}) an empty trusted root (no CAs, tlogs, ctlogs or TSAs)
//                                        and a key map holding our SPKI DER under the bundle's
//                                        verificationMaterial.publicKey.hint
//   new Verifier(trust, {tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0}).verify()
// Before that, checks @sigstore/verify leaves to the caller: the media type is v0.3, the hint
// is the key id of the given key ("sha256:" + hex sha256 of SPKI DER), the envelope holds
// exactly one signature whose keyid is that key id, and the payloadType is in-toto's.
// Exit 0 on success; otherwise exit 1 with the reason.

import { createHash, createPublicKey } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const BUNDLE_V03 = 'application/vnd.dev.sigstore.bundle.v0.3+json';
const IN_TOTO = 'application/vnd.in-toto+json';

function fail(msg) {
  console.error(`verify_bundle: FAIL: ${msg}`);
  process.exit(1);
}

function loader() {
  const dir = path.join(process.env.BULWARK_INTEROP_DIR || '/opt/bulwark-interop', 'node');
  if (existsSync(path.join(dir, 'node_modules', '@sigstore', 'verify'))) {
    return createRequire(path.join(dir, 'package.json'));
  }
  return createRequire(import.meta.url);
}

if (process.argv.length !== 4) {
  console.error('usage: verify_bundle.mjs BUNDLE_JSON PUBKEY_PEM');
  process.exit(2);
}
const [bundlePath, pemPath] = process.argv.slice(2);

let sigstoreBundle, sigstoreVerify;
try {
  const require = loader();
  sigstoreBundle = require('@sigstore/bundle');
  sigstoreVerify = require('@sigstore/verify');
} catch (e) {
  fail(`cannot load @sigstore/verify (run tests/interop/setup.sh): ${e.message}`);
}
const { bundleFromJSON, assertBundleLatest } = sigstoreBundle;
const { toSignedEntity, toTrustMaterial, Verifier } = sigstoreVerify;

let keyObject;
try {
  keyObject = createPublicKey(readFileSync(pemPath));
} catch (e) {
  fail(`${pemPath}: not a readable PEM public key: ${e.message}`);
}
const spki = keyObject.export({ format: 'der', type: 'spki' });
const keyid = 'sha256:' + createHash('sha256').update(spki).digest('hex');
console.log(`key: ${keyObject.asymmetricKeyType} keyid ${keyid}`);

let json;
try {
  json = JSON.parse(readFileSync(bundlePath, 'utf8'));
} catch (e) {
  fail(`${bundlePath}: not JSON: ${e.message}`);
}

let bundle;
try {
  bundle = bundleFromJSON(json);
  assertBundleLatest(bundle);
} catch (e) {
  fail(`@sigstore/bundle rejects the bundle: ${e.name}: ${e.message}`);
}

if (bundle.mediaType !== BUNDLE_V03) fail(`mediaType ${bundle.mediaType}, expected ${BUNDLE_V03}`);
if (bundle.verificationMaterial.content?.$case !== 'publicKey') {
  fail(`verificationMaterial is ${bundle.verificationMaterial.content?.$case}, expected publicKey`);
}
const hint = bundle.verificationMaterial.content.publicKey.hint;
if (hint !== keyid) fail(`publicKey.hint ${hint} is not the key id of ${pemPath} (${keyid})`);
if (bundle.content.$case !== 'dsseEnvelope') fail(`content is ${bundle.content.$case}, expected dsseEnvelope`);
const env = bundle.content.dsseEnvelope;
if (env.payloadType !== IN_TOTO) fail(`payloadType ${env.payloadType}, expected ${IN_TOTO}`);
if (env.signatures.length !== 1) fail(`${env.signatures.length} DSSE signatures, expected exactly 1`);
if (env.signatures[0].keyid !== keyid) fail(`signature keyid ${env.signatures[0].keyid}, expected ${keyid}`);

const emptyRoot = {
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: [],
};
// PublicKey (protobuf-specs): rawBytes is SPKI DER; no validFor means valid at all times.
const keys = { [hint]: { rawBytes: spki, keyDetails: undefined, validFor: undefined } };

try {
  const entity = toSignedEntity(bundle);
  const trust = toTrustMaterial(emptyRoot, keys);
  const verifier = new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 });
  verifier.verify(entity);
} catch (e) {
  fail(`@sigstore/verify rejects the bundle: ${e.name}${e.code ? ` ${e.code}` : ''}: ${e.message}`);
}
console.log(
  `verify_bundle: OK: ${BUNDLE_V03} with a DSSE envelope (${env.payload.length} payload bytes), ` +
    `verified offline by @sigstore/verify with ${keyid}`,
);
