"""A token service for the credentials tests: the three exchanges Bulwark speaks, each of
which verifies the job identity token independently (PyJWT, against the coordinator's JWKS)
exactly as a cloud's STS would, then issues fresh random credentials.

    fake_sts.py --jwks-url URL --issuer ISS --record FILE [--lifetime SECONDS]
                [--refuse-from PATH=N]

Endpoints (loopback, a free port; prints `listening on PORT` once bound):
  POST /aws                     AssumeRoleWithWebIdentity (form in, XML out); aud sts.amazonaws.com
  POST /token                   RFC 8693 token exchange (form in, JSON out); aud gcp-test
  POST /v1/auth/jwt/login       Vault JWT login (JSON in, JSON out); aud vault

Every request is appended to FILE as one JSON line: the endpoint, whether it was accepted,
the verified claims, the parameters other than the token, and the values issued, so a test
can compare what the job saw with what was issued, and prove a request never came.
With --lifetime, everything issued expires after that many seconds (AWS: whatever
DurationSeconds asked), so a test can watch the runner refresh credentials mid-job; with
--refuse-from /aws=2, the second and every later request to /aws is refused (a refresh that
fails while the first exchange succeeded; only /aws honours it).
Roles: AWS accepts only role arn:aws:iam::123456789012:role/release; Vault only role
"release"; everything requires the claim trust=trusted and ref refs/heads/main.
"""

import argparse
import json
import secrets
import sys
import threading
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

ARGS = None
LOCK = threading.Lock()
SEEN = {}


def jwks():
    with urllib.request.urlopen(ARGS.jwks_url, timeout=10) as r:
        return jwt.PyJWKSet.from_dict(json.load(r))


def verify(token, audience):
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [k for k in jwks().keys if k.key_id == kid]
    if len(keys) != 1:
        raise jwt.InvalidTokenError(f"unknown kid {kid!r}")
    claims = jwt.decode(
        token,
        keys[0],
        algorithms=["ES256"],
        audience=audience,
        issuer=ARGS.issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    if claims.get("trust") != "trusted" or claims.get("ref") != "refs/heads/main":
        raise jwt.InvalidTokenError("the trust policy refuses these claims")
    return claims


def record(entry):
    with LOCK, open(ARGS.record, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, status, body, ctype):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(n).decode()
        entry = {"path": self.path}
        try:
            if self.path == "/aws":
                form = dict(urllib.parse.parse_qsl(raw))
                token = form.pop("WebIdentityToken")
                entry["params"] = form
                try:
                    entry["claims"] = verify(token, "sts.amazonaws.com")
                    if form.get("RoleArn") != "arn:aws:iam::123456789012:role/release":
                        raise jwt.InvalidTokenError("not authorized for this role")
                    with LOCK:
                        SEEN[self.path] = SEEN.get(self.path, 0) + 1
                        nth = SEEN[self.path]
                    path, _, start = (ARGS.refuse_from or "=").partition("=")
                    if path == self.path and nth >= int(start):
                        raise jwt.InvalidTokenError(f"request {nth} to {path} refused by --refuse-from")
                except jwt.PyJWTError as e:
                    entry["accepted"] = False
                    record(entry)
                    # A service that quotes the token back: the runner must mask it.
                    msg = f"Not authorized to perform sts:AssumeRoleWithWebIdentity ({e}); token {token}"
                    return self.reply(
                        403,
                        f"<ErrorResponse><Error><Code>AccessDenied</Code><Message>{msg}</Message></Error></ErrorResponse>",
                        "text/xml",
                    )
                issued = {
                    "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
                    "SecretAccessKey": secrets.token_urlsafe(30),
                    "SessionToken": secrets.token_urlsafe(200),
                    "Expiration": (datetime.now(timezone.utc) + timedelta(seconds=ARGS.lifetime or int(form["DurationSeconds"]))).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                entry.update(accepted=True, issued=issued)
                record(entry)
                creds = "".join(f"<{k}>{v}</{k}>" for k, v in issued.items())
                return self.reply(
                    200,
                    "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>"
                    f"<Credentials>{creds}</Credentials>"
                    "</AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
                    "text/xml",
                )
            if self.path == "/token":
                form = dict(urllib.parse.parse_qsl(raw))
                token = form.pop("subject_token")
                entry["params"] = form
                if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" or form.get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt":
                    entry["accepted"] = False
                    record(entry)
                    return self.reply(400, json.dumps({"error": "invalid_request"}), "application/json")
                entry["claims"] = verify(token, "gcp-test")
                issued = {"access_token": "ya29." + secrets.token_urlsafe(40), "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": ARGS.lifetime or 600}
                entry.update(accepted=True, issued=issued)
                record(entry)
                return self.reply(200, json.dumps(issued), "application/json")
            if self.path == "/v1/auth/jwt/login":
                body = json.loads(raw)
                token = body.pop("jwt")
                entry["params"] = body
                entry["claims"] = verify(token, "vault")
                if body.get("role") != "release":
                    raise jwt.InvalidTokenError("role not allowed")
                issued = {"client_token": "hvs." + secrets.token_urlsafe(30), "lease_duration": ARGS.lifetime or 900}
                entry.update(accepted=True, issued=issued)
                record(entry)
                return self.reply(200, json.dumps({"auth": issued}), "application/json")
            record(entry)
            return self.reply(404, "{}", "application/json")
        except jwt.PyJWTError as e:
            entry["accepted"] = False
            entry["error"] = str(e)
            record(entry)
            return self.reply(403, json.dumps({"error": "access_denied", "error_description": str(e), "errors": [str(e)]}), "application/json")


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--jwks-url", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--record", required=True)
    p.add_argument("--lifetime", type=int, default=0)
    p.add_argument("--refuse-from", default="")
    ARGS = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
