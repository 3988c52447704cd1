"""schemathesis, the property-based API tester, over the OpenAPI document that FastAPI writes
for `reslab serve`, against the real command on a free loopback port: every operation of /v1
and /v2 with generated (valid and invalid) parameters, headers and bodies; no answer may be a
5xx, and every answer must conform to the document (status, content type, headers, schema).
Bounded: 20 cases per operation, no deadline per case, the whole file well under a
minute on two cores.

The cases are generated from the document of an app built at collection (parametrizing needs
the document then); the server's own /openapi.json is checked to be the same document."""
from __future__ import annotations

import zlib

import httpx
import pytest

from serve_helpers import ServeProcess, digits_files

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.specs.openapi import checks  # noqa: E402

NAME = "digits"
CHECKS = [schemathesis.checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_headers_conformance,
          checks.response_schema_conformance]


def _document() -> dict:
    """The OpenAPI document of a server of a digits-shaped resnet8 (weights do not matter)."""
    from reslab.models import create_model
    from reslab.weights.record import Record
    from reslab.serve import ServeOptions, create_app

    model = create_model("resnet8", num_classes=10, in_chans=1).eval()
    record = Record.from_json({
        "architecture": "resnet8", "kwargs": {"num_classes": 10, "in_chans": 1},
        "class_names": list("0123456789"),
        "preprocess": {"input_size": [1, 8, 8], "mean": [0.5], "std": [0.25]}})
    return create_app(model, record, model, ServeOptions(), {"runtime": "torch"}).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(autouse=True)
def _subnormals():
    """Hypothesis draws floats, subnormal ones included, and refuses to when the CPU flushes
    them (conftest.py flushes them for speed): off for these tests."""
    import torch

    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt, _ = digits_files(tmp_path_factory.mktemp("serve-schema"), 1)
    with ServeProcess(ckpt, "--runtime", "torch", "--model-name", NAME, "--max-wait-ms", "1",
                      "--max-body-mb", "1") as proc:
        assert httpx.get(f"{proc.url}/openapi.json").json() == DOCUMENT
        yield proc.url


@schema.parametrize()
@settings(max_examples=20, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_openapi_document(case, server) -> None:
    # half the cases name the served model, so that they reach the model's code, not a 404
    drawn = repr((case.path_parameters, case.query, case.headers, case.body))
    if case.path_parameters and zlib.crc32(drawn.encode()) % 2 == 0:
        case.path_parameters = {**case.path_parameters, "name": NAME,
                                **({"version": "1"} if "version" in case.path_parameters
                                   else {})}
    case.call_and_validate(base_url=server, checks=CHECKS, timeout=30)
