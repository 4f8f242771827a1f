#!/usr/bin/env python3
"""Verifies a Bulwark job identity token with PyJWT, independently of the coordinator's code.

The key comes from the coordinator's JWKS (fetched over HTTP with PyJWKClient, as a cloud's
OIDC federation would, or read from a file); the token must be ES256, typ JWT, carry the kid
of that key, and have the expected issuer and audience, and iat/nbf/exp/jti/sub. Prints the
verified claims as JSON on stdout; exits non-zero with the reason on stderr otherwise.

    verify_jwt.py --jwks-url http://127.0.0.1:8440/.well-known/jwks.json \
        --issuer https://ci.example.com --audience sts.amazonaws.com --token-stdin < token
"""
import argparse
import json
import sys

import jwt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--jwks-url", help="the coordinator's /.well-known/jwks.json")
    src.add_argument("--jwks-file", help="a JWKS document saved to a file")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--token", help="the JWT (appears in the process list: prefer --token-stdin)")
    tok.add_argument("--token-stdin", action="store_true", help="read the JWT from stdin")
    p.add_argument("--issuer", required=True)
    p.add_argument("--audience", required=True)
    a = p.parse_args()

    token = sys.stdin.read().strip() if a.token_stdin else a.token
    header = jwt.get_unverified_header(token)
    if header.get("alg") != "ES256" or header.get("typ") != "JWT" or not header.get("kid"):
        print(f"refused: header is {header}, expected alg ES256, typ JWT and a kid", file=sys.stderr)
        return 1

    if a.jwks_url:
        key = jwt.PyJWKClient(a.jwks_url, cache_keys=False).get_signing_key_from_jwt(token)
    else:
        with open(a.jwks_file, encoding="utf-8") as f:
            keys = jwt.PyJWKSet.from_dict(json.load(f))
        matches = [k for k in keys.keys if k.key_id == header["kid"]]
        if len(matches) != 1:
            print(f"refused: no single key with kid {header['kid']} in the JWKS", file=sys.stderr)
            return 1
        key = matches[0]

    claims = jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience=a.audience,
        issuer=a.issuer,
        options={"require": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]},
    )
    json.dump(claims, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except jwt.PyJWTError as e:
        print(f"refused: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
