"""Verifies a Bulwark job identity token with PyJWT, as a cloud STS would.

    verify_jwt.py BASE_URL TOKEN_FILE AUDIENCE ISSUER

Reads the coordinator's OIDC discovery document from BASE_URL, checks that it names ISSUER
and the JWKS under it, fetches the JWKS from BASE_URL (the test's issuer name does not
resolve; a real STS fetches the jwks_uri itself), then verifies the token's ES256 signature
by its `kid`, its issuer, audience and times, and that every claim an STS relies on is
there. Prints the claims as JSON and exits 0, or prints why and exits 1.
"""

import json
import sys
import urllib.request

import jwt


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def main():
    base, token_file, audience, issuer = sys.argv[1:5]
    token = open(token_file).read().strip()
    discovery = fetch(base + "/.well-known/openid-configuration")
    if discovery.get("issuer") != issuer:
        print(f"discovery names issuer {discovery.get('issuer')!r}, not {issuer!r}")
        return 1
    if discovery.get("jwks_uri") != issuer + "/.well-known/jwks.json":
        print(f"discovery's jwks_uri is {discovery.get('jwks_uri')!r}")
        return 1
    if "ES256" not in discovery.get("id_token_signing_alg_values_supported", []):
        print("discovery does not list ES256")
        return 1
    jwks = jwt.PyJWKSet.from_dict(fetch(base + "/.well-known/jwks.json"))
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [k for k in jwks.keys if k.key_id == kid]
    if len(keys) != 1:
        print(f"no key with kid {kid!r} in the JWKS")
        return 1
    try:
        claims = jwt.decode(
            token,
            keys[0],
            algorithms=["ES256"],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
        )
    except jwt.PyJWTError as e:
        print(f"rejected: {type(e).__name__}: {e}")
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
