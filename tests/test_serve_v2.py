"""The Open Inference Protocol (KServe v2) of `reslab serve`, spoken by the official client,
tritonclient.http, unmodified, against the real command on a free loopback port: health,
metadata, inference on encoded images (binary-data extension and base64 JSON) equal to
`reslab predict`'s probabilities, prepared FP32 tensors, Triton's classification extension;
every bad request gets its 4xx {"error": ...} and the server keeps serving; /metrics counts v2.
"""
from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from reslab.cli import main
from reslab.deploy.predict import prepare_images
from reslab.weights.checkpoint import load_checkpoint
from reslab.serve.v2 import model_name_of
from serve_helpers import ServeProcess, digits_files

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

NAME = "digits"
METADATA = {"name": NAME, "versions": ["1"], "platform": "reslab_torch",
            "inputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]},
                       {"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                        {"name": "labels", "datatype": "BYTES", "shape": [-1]}]}


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, list[Path]]:
    return digits_files(tmp_path_factory.mktemp("serve-v2"), 6)


@pytest.fixture(scope="module")
def server(digits):
    with ServeProcess(digits[0], "--runtime", "torch", "--max-batch", "8", "--max-wait-ms",
                      "2", "--max-body-mb", "0.0625", "--model-name", NAME) as proc:
        assert proc.lines[1] == f"v2 (Open Inference Protocol) {proc.url}/v2/models/{NAME}"
        yield proc.url


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.removeprefix("http://"), network_timeout=30,
                                         connection_timeout=30)
    yield c
    c.close()


@pytest.fixture(scope="module")
def expected(digits) -> np.ndarray:
    """`reslab predict --json`'s probabilities of every class, (N, 10), in a subprocess-free
    call of the CLI."""
    import contextlib
    import io

    ckpt, paths = digits
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["predict", str(ckpt), *map(str, paths), "--json", "--topk", "10",
                     "--runtime", "torch"]) == 0
    probs = np.zeros((len(paths), 10), np.float32)
    for i, p in enumerate(json.loads(out.getvalue())["predictions"]):
        for t in p["top"]:
            probs[i, t["index"]] = t["prob"]
    return probs


def _images(paths: list[Path], binary: bool = True):
    x = httpclient.InferInput("images", [len(paths)], "BYTES")
    files = [p.read_bytes() for p in paths]
    if binary:
        x.set_data_from_numpy(np.array(files, dtype=object))
    else:  # JSON: base64 strings, the protocol's way to carry bytes in JSON
        x.set_data_from_numpy(np.array([base64.b64encode(f).decode() for f in files],
                                       dtype=object), binary_data=False)
    return x


def test_health_and_metadata(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "1")
    assert not client.is_model_ready("other") and not client.is_model_ready(NAME, "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "reslab" and meta["extensions"] == ["binary_data", "classification"]
    assert client.get_model_metadata(NAME) == METADATA
    assert client.get_model_metadata(NAME, "1") == METADATA
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata(NAME, "2")
    assert e.value.status() == "404"
    assert e.value.message() == "model 'digits' has no version '2': its one version is '1'"
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("other")
    assert e.value.message() == "unknown model 'other': this server serves 'digits'"


def test_infer_on_encoded_images_equals_reslab_predict(client, digits, expected) -> None:
    paths = digits[1]
    names = [str(i) for i in expected.argmax(1)]
    # tritonclient's default: binary inputs, and with no outputs named, binary outputs
    result = client.infer(NAME, [_images(paths)])
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (len(paths), 10)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert [b.decode() for b in result.as_numpy("labels")] == names
    assert result.get_response()["model_name"] == NAME
    # base64 JSON in, JSON and binary outputs out, one version-qualified
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False),
               httpclient.InferRequestedOutput("labels", binary_data=True)]
    result = client.infer(NAME, [_images(paths[:2], binary=False)], model_version="1",
                          outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "1"
    assert response["outputs"][0]["shape"] == [2, 10] and "data" in response["outputs"][0]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected[:2], atol=1e-6)
    assert [b.decode() for b in result.as_numpy("labels")] == names[:2]
    # Triton's classification extension: "probability:index:label" of the top k
    top = client.infer(NAME, [_images(paths[:1])], outputs=[
        httpclient.InferRequestedOutput("probabilities", class_count=3)]).as_numpy(
        "probabilities")
    assert top.shape == (1, 3)
    order = np.argsort(-expected[0])[:3]
    assert [int(s.decode().split(":")[1]) for s in top[0]] == order.tolist()
    assert [s.decode().split(":")[2] for s in top[0]] == [str(i) for i in order]
    np.testing.assert_allclose([float(s.decode().split(":")[0]) for s in top[0]],
                               expected[0, order], atol=1e-5)


def test_infer_on_prepared_fp32_tensors(client, digits, expected) -> None:
    ckpt, paths = digits
    x = prepare_images(load_checkpoint(ckpt)[1], paths).numpy()
    for binary in (True, False):
        t = httpclient.InferInput("input", list(x.shape), "FP32")
        t.set_data_from_numpy(x, binary_data=binary)
        probs = client.infer(NAME, [t]).as_numpy("probabilities")
        np.testing.assert_allclose(probs, expected, atol=1e-6)
    t = httpclient.InferInput("input", [1, 1, 4, 4], "FP32")
    t.set_data_from_numpy(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer(NAME, [t])
    assert e.value.status() == "400" and e.value.message() == (
        "input 'input' must have shape [N, 1, 8, 8] (the model's input size), not "
        "[1, 1, 4, 4]")


def test_a_bad_image_gets_a_4xx_and_the_server_keeps_serving(client, server, digits,
                                                             expected) -> None:
    bad = httpclient.InferInput("images", [2], "BYTES")
    bad.set_data_from_numpy(np.array([digits[1][0].read_bytes(), b"not an image"],
                                     dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer(NAME, [bad])
    assert e.value.status() == "422"
    assert e.value.message().startswith("cannot read image 'images[1]': cannot identify "
                                        "image file")
    probs = client.infer(NAME, [_images(digits[1][:1])]).as_numpy("probabilities")
    np.testing.assert_allclose(probs, expected[:1], atol=1e-6)
    text = httpx.get(f"{server}/metrics").text
    assert 'reslab_errors_total{api="v2",error="not_an_image"} 1.0' in text
    assert 'reslab_requests_total{api="v2",status="422"} 1.0' in text
    assert 'reslab_requests_total{api="v2",status="200"}' in text


def _framed(header: dict, binary: bytes) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(header).encode()
    return raw + binary, {"Inference-Header-Content-Length": str(len(raw))}


def _images_request(n: int, size: int | None = None) -> dict:
    params = {} if size is None else {"parameters": {"binary_data_size": size}}
    return {"inputs": [{"name": "images", "shape": [n], "datatype": "BYTES", **params}]}


BAD = {  # case: (body, headers, status, message start)
    "not JSON": (b"{", {}, 400, "invalid inference request"),
    "no inputs": (b'{"inputs": []}', {}, 400, "invalid inference request at inputs: List "
                  "should have at least 1 item"),
    "header length past the body": (b"{}", {"Inference-Header-Content-Length": "9"}, 400,
                                    "Inference-Header-Content-Length 9 is not within the "
                                    "body's 2 bytes"),
    "header length not a number": (b"{}", {"Inference-Header-Content-Length": "x"}, 400,
                                   "invalid Inference-Header-Content-Length: Input should be "
                                   "a valid integer"),
    "unknown input": (json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                              "data": [1]}]}).encode(), {}, 400,
                      "unknown input 'x': this model takes 'images' (BYTES, encoded images) "
                      "or 'input' (FP32, prepared tensors)"),
    "wrong datatype": (json.dumps({"inputs": [{"name": "images", "shape": [1],
                                               "datatype": "FP32", "data": [1]}]}).encode(),
                       {}, 400, "input 'images' has datatype BYTES, not FP32"),
    "not base64": (json.dumps({**_images_request(1)} | {"inputs": [{
        "name": "images", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}).encode(), {},
        400, "input 'images': JSON data must be base64 strings of image files"),
    "binary size past the data": (*_framed(_images_request(1, 100), b"\x05\0\0\0ab"), 400,
                                  "input 'images': binary_data_size 100 runs past the 6 bytes "
                                  "of binary data"),
    "element past the data": (*_framed(_images_request(1, 6), b"\x05\0\0\0ab"), 400,
                              "input 'images': binary BYTES element of 5 bytes runs past the "
                              "data"),
    "bytes left over": (*_framed(_images_request(1, 4), b"\0\0\0\0xx"), 400,
                        "2 bytes of binary data belong to no input"),
    "shape and data disagree": (*_framed(_images_request(2, 4), b"\0\0\0\0"), 400,
                                "input 'images' has 1 elements but its shape [2] says 2"),
    "not finite": (*_framed({"inputs": [{"name": "input", "shape": [1, 1, 8, 8],
                                         "datatype": "FP32",
                                         "parameters": {"binary_data_size": 256}}]},
                            struct.pack("<64f", *([float("nan")] * 64))), 400,
                   "input 'input' holds values that are not finite fp32 numbers"),
    "number too large": (json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8],
                                                 "datatype": "FP32",
                                                 "data": [10**400] + [0] * 63}]}).encode(), {},
                         400, "input 'input' holds values that are not finite fp32 numbers"),
    "unknown output": (json.dumps({**_images_request(1), "outputs": [{"name": "logits"}]})
                       .encode(), {}, 400, "unknown output 'logits': this model has "
                       "'probabilities' and 'labels'"),
    "compressed": (b"{}", {"Content-Encoding": "gzip"}, 415,
                   "Content-Encoding 'gzip' is not supported"),
    "body too large": (bytes(70 * 2**10), {}, 413, "request body of 71,680 bytes is larger "
                       "than the server's limit of 65,536 bytes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_a_4xx_error_naming_them(server, case) -> None:
    body, headers, status, message = BAD[case]
    r = httpx.post(f"{server}/v2/models/{NAME}/infer", content=body, headers=headers,
                   timeout=30)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and r.json()["error"].startswith(message), r.json()


def test_the_default_model_name_is_the_run_name(tmp_path) -> None:
    run = tmp_path / "fmnist resnet20"
    run.mkdir()
    assert model_name_of(run) == "fmnist-resnet20"
    assert model_name_of(tmp_path / ".my run.v2.safetensors") == "my-run.v2"


def test_the_deploy_guide_example_runs_as_written(server, client, digits, expected,
                                                  capsys) -> None:
    """docs/guides/deploy.md's tritonclient example, its address, model name and files
    replaced by this server's."""
    guide = Path(__file__).resolve().parents[1] / "docs" / "guides" / "deploy.md"
    section = guide.read_text("utf-8").split("### The Open Inference Protocol (v2)")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for old, new in (('"localhost:8000"', repr(server.removeprefix("http://"))),
                     ('"fmnist-resnet20"', repr(NAME)),
                     ('("shirt.png", "boot.png")', repr(tuple(map(str, digits[1][:2]))))):
        assert old in code, old
        code = code.replace(old, new)
    capsys.readouterr()
    exec(compile(code, str(guide), "exec"), {})
    shape, labels = capsys.readouterr().out.splitlines()
    assert shape == "(2, 10)"
    assert labels == str(np.array([str(i).encode() for i in expected[:2].argmax(1)],
                                  dtype=object))
