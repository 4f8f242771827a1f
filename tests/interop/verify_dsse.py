#!/usr/bin/env python3
"""Verifies every DSSE envelope in a Bulwark `provenance.intoto.jsonl` with securesystemslib.

    verify_dsse.py ENVELOPE_JSONL PUBKEY_PEM

An independent check of Bulwark's signing: the key is built by securesystemslib from the PEM
public key (`signing.pub` from `bulwark keygen`), its key id computed here as Bulwark documents
it ("sha256:" + hex sha256 of the SPKI DER, docs/build-type.md), and each line is parsed with
`securesystemslib.dsse.Envelope.from_dict` and checked with `Envelope.verify(keys, threshold=1)`,
which matches signatures to keys by keyid and verifies over the DSSE PAE. Exit 0 only if every
line verifies; otherwise exit 1 naming the line and the reason.
"""

import hashlib
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


def fail(msg: str) -> "None":
    print(f"verify_dsse: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def load_key(pem: bytes) -> SSlibKey:
    public = serialization.load_pem_public_key(pem)
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name != "secp256r1":
            fail(f"unsupported curve {public.curve.name}")
        scheme = "ecdsa-sha2-nistp256"
    elif isinstance(public, ed25519.Ed25519PublicKey):
        scheme = "ed25519"
    else:
        fail(f"unsupported key type {type(public).__name__}")
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keyid = "sha256:" + hashlib.sha256(spki).hexdigest()
    return SSlibKey.from_crypto(public, keyid=keyid, scheme=scheme)


def main() -> None:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    jsonl, pem_path = sys.argv[1], sys.argv[2]
    try:
        with open(pem_path, "rb") as f:
            pem = f.read()
        with open(jsonl, "rb") as f:
            lines = [l for l in f.read().split(b"\n") if l.strip()]
    except OSError as e:
        fail(str(e))
    try:
        key = load_key(pem)
    except ValueError as e:
        fail(f"{pem_path}: not a PEM public key: {e}")
    print(f"key: {key.scheme} keyid {key.keyid}")
    if not lines:
        fail(f"{jsonl}: no envelopes")
    for n, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
        except ValueError as e:
            fail(f"line {n}: not JSON: {e}")
        try:
            envelope = Envelope.from_dict(data)
        except Exception as e:  # securesystemslib raises several kinds here
            fail(f"line {n}: not a DSSE envelope securesystemslib accepts: {type(e).__name__}: {e}")
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
            fail(f"line {n}: payloadType {envelope.payload_type!r}, expected {IN_TOTO_PAYLOAD_TYPE!r}")
        keyids = sorted(envelope.signatures)
        try:
            accepted = envelope.verify([key], threshold=1)
        except Exception as e:
            fail(
                f"line {n}: signature verification failed (signature keyids {keyids}): "
                f"{type(e).__name__}: {e}"
            )
        if key.keyid not in accepted:
            fail(f"line {n}: key {key.keyid} not among the accepted keys {sorted(accepted)}")
        print(
            f"line {n}: OK: payloadType {envelope.payload_type}, {len(envelope.payload)} payload "
            f"bytes, {len(keyids)} signature(s), verified by {key.keyid} ({key.scheme})"
        )
    print(f"verify_dsse: OK: {len(lines)} envelope(s) verified")


if __name__ == "__main__":
    main()
