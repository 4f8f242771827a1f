#!/usr/bin/env python3
"""Validates the in-toto Statement in every envelope of a Bulwark `provenance.intoto.jsonl`
with the in-toto-attestation package (PyPI `in-toto-attestation`).

    validate_statement.py ENVELOPE_JSONL

For each line: the payload (standard base64) is decoded and
  1. parsed into the package's Statement v1 protobuf (`in_toto_attestation.v1.statement_pb2`)
     with `google.protobuf.json_format.Parse`, unknown fields being errors, and checked with the
     package's `Statement.validate()` (type, subjects with digests, predicateType, predicate);
  2. its predicateType must be SLSA Provenance v1 and the predicate is parsed with the SLSA
     Provenance v1 message shipped in the package
     (`in_toto_attestation.predicates.provenance.v1.provenance_pb2.Provenance`), again without
     `ignore_unknown_fields`: a misspelled or unknown field, or a timestamp without a zone, is
     an error;
  3. the package ships no validate function for Provenance v1 (only its Go bindings do), so
     the checks of the reference Go `Provenance.Validate()` are applied here: buildDefinition,
     buildType, externalParameters, runDetails, builder and builder.id required, and every
     ResourceDescriptor (resolvedDependencies, builderDependencies, byproducts) checked with the
     package's `ResourceDescriptor.validate()`; digests must be lowercase hex of the right length
     for sha256/sha512.
Exit 0 only if every line passes; otherwise exit 1 naming the line and the reason. This script
does not verify signatures (verify_dsse.py does).
"""

import base64
import binascii
import json
import re
import sys

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
HEX_LEN = {"sha256": 64, "sha512": 128}


class Invalid(Exception):
    pass


def no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise Invalid(f"duplicate JSON keys {dupes}")
    return dict(pairs)


def check_descriptor(where: str, rd_pb) -> None:
    rd = ResourceDescriptor.copy_from_pb(rd_pb)
    try:
        rd.validate()
    except ValueError as e:
        raise Invalid(f"{where}: {e}") from e
    for alg, value in rd.pb.digest.items():
        want = HEX_LEN.get(alg)
        if want is not None and not re.fullmatch(f"[0-9a-f]{{{want}}}", value):
            raise Invalid(f"{where}: digest {alg} {value!r} is not {want} lowercase hex digits")


def validate_provenance(p) -> None:
    """The checks of in-toto/attestation's Go `(*Provenance).Validate()` for SLSA v1."""
    if not p.HasField("build_definition"):
        raise Invalid("predicate: buildDefinition required")
    bd = p.build_definition
    if bd.build_type == "":
        raise Invalid("predicate.buildDefinition: buildType required")
    if not bd.HasField("external_parameters"):
        raise Invalid("predicate.buildDefinition: externalParameters required")
    for i, rd in enumerate(bd.resolved_dependencies):
        check_descriptor(f"predicate.buildDefinition.resolvedDependencies[{i}]", rd)
    if not p.HasField("run_details"):
        raise Invalid("predicate: runDetails required")
    rdet = p.run_details
    if not rdet.HasField("builder"):
        raise Invalid("predicate.runDetails: builder required")
    if rdet.builder.id == "":
        raise Invalid("predicate.runDetails.builder: id required")
    for i, rd in enumerate(rdet.builder.builder_dependencies):
        check_descriptor(f"predicate.runDetails.builder.builderDependencies[{i}]", rd)
    for i, rd in enumerate(rdet.byproducts):
        check_descriptor(f"predicate.runDetails.byproducts[{i}]", rd)
    if rdet.HasField("metadata"):
        m = rdet.metadata
        if (
            m.HasField("started_on")
            and m.HasField("finished_on")
            and m.finished_on.ToDatetime() < m.started_on.ToDatetime()
        ):
            raise Invalid("predicate.runDetails.metadata: finishedOn is before startedOn")


def validate_line(line: bytes) -> str:
    try:
        envelope = json.loads(line, object_pairs_hook=no_duplicate_keys)
    except ValueError as e:
        raise Invalid(f"envelope is not JSON: {e}") from e
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
    except (KeyError, TypeError, binascii.Error) as e:
        raise Invalid(f"payload is not standard base64: {e}") from e
    try:
        text = payload.decode("utf-8")
        statement_json = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except ValueError as e:
        raise Invalid(f"payload is not UTF-8 JSON: {e}") from e

    # 1. Statement v1.
    pb = statement_pb2.Statement()
    try:
        json_format.Parse(text, pb)  # ignore_unknown_fields=False
    except json_format.ParseError as e:
        raise Invalid(f"Statement v1 protobuf rejects the payload: {e}") from e
    try:
        Statement.copy_from_pb(pb).validate()
    except ValueError as e:
        raise Invalid(f"Statement.validate(): {e}") from e
    for i, s in enumerate(pb.subject):
        check_descriptor(f"subject[{i}]", s)

    # 2. SLSA Provenance v1 predicate, strictly.
    if pb.predicate_type != SLSA_PROVENANCE_V1:
        raise Invalid(f"predicateType {pb.predicate_type!r}, expected {SLSA_PROVENANCE_V1!r}")
    prov = provenance_pb2.Provenance()
    try:
        json_format.Parse(json.dumps(statement_json["predicate"]), prov)
    except json_format.ParseError as e:
        raise Invalid(f"SLSA Provenance v1 protobuf rejects the predicate: {e}") from e

    # 3. What the reference validator checks.
    validate_provenance(prov)
    return (
        f"Statement v1 with {len(pb.subject)} subject(s), SLSA Provenance v1 "
        f"buildType {prov.build_definition.build_type}, builder {prov.run_details.builder.id}, "
        f"{len(prov.build_definition.resolved_dependencies)} resolved dependencies, "
        f"{len(prov.run_details.byproducts)} byproducts"
    )


def main() -> None:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        with open(sys.argv[1], "rb") as f:
            lines = [l for l in f.read().split(b"\n") if l.strip()]
    except OSError as e:
        print(f"validate_statement: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    if not lines:
        print(f"validate_statement: FAIL: {sys.argv[1]}: no envelopes", file=sys.stderr)
        sys.exit(1)
    for n, line in enumerate(lines, 1):
        try:
            what = validate_line(line)
        except Invalid as e:
            print(f"validate_statement: FAIL: line {n}: {e}", file=sys.stderr)
            sys.exit(1)
        print(f"line {n}: OK: {what}")
    print(f"validate_statement: OK: {len(lines)} statement(s) valid")


if __name__ == "__main__":
    main()
