"""`reslab serve` (reslab.serve): a real uvicorn server on a free loopback port. Predictions
equal `reslab predict`'s on the same files; each class of bad input gets its 4xx JSON error and
the server keeps serving; a full queue answers 503 with Retry-After; SIGTERM answers the
requests in flight and exits 0; the upload page works in headless Chromium."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import reslab
from cli_helpers import clean_error
from reslab.cli import main
from reslab.serve import ServeOptions, create_app, listen, load_service
from serve_helpers import ThreadServer, digits_files

LIMITS = ServeOptions(max_batch=8, max_wait_ms=2, max_body_mb=1 / 16,
                      max_pixels=100 * 100, topk=3)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, list[Path]]:
    return digits_files(tmp_path_factory.mktemp("serve"), 12)


@pytest.fixture(scope="module")
def served(digits):
    service = load_service(digits[0], "torch", max_batch=LIMITS.max_batch)
    app = service.app(LIMITS)
    with ThreadServer(app) as url:
        yield url, app


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _post(url: str, data: bytes, ctype: str | None = "image/png", **kw) -> httpx.Response:
    """ctype None: no content-type header at all."""
    headers = {} if ctype is None else {"content-type": ctype}
    return httpx.post(f"{url}/v1/predict", content=data, headers=headers, timeout=30, **kw)


# --- good requests ----------------------------------------------------------------------------

def test_predictions_equal_reslab_predict(served, digits, capsys) -> None:
    url, _ = served
    ckpt, paths = digits
    assert main(["predict", str(ckpt), *map(str, paths), "--json", "--topk", "3",
                 "--device", "cpu", "--runtime", "torch"]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = httpx.post(f"{url}/v1/predict", files=files, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["architecture"] == "resnet8" and body["runtime"] == "torch"
    got = body["predictions"]
    assert [g["file"] for g in got] == [p.name for p in paths]
    # one image as the raw body, concurrently with others: batched with them, same answer
    with ThreadPoolExecutor(6) as pool:
        raw = list(pool.map(lambda p: _post(url, p.read_bytes()).json()["predictions"][0],
                            paths))
    for want, multi, single in zip(expected, got, raw):
        for answer in (multi, single):
            assert [t["index"] for t in answer["top"]] == [t["index"] for t in want["top"]]
            assert [t["class"] for t in answer["top"]] == [t["class"] for t in want["top"]]
            # the same function; only the batch's composition differs (fp32 rounding)
            np.testing.assert_allclose([t["prob"] for t in answer["top"]],
                                       [t["prob"] for t in want["top"]], atol=1e-6)
    assert single["file"] == "body"
    topk = _post(url, paths[0].read_bytes(), params={"topk": 1}).json()
    assert len(topk["predictions"][0]["top"]) == 1


def test_model_health_and_metrics(served) -> None:
    url, _ = served
    model = httpx.get(f"{url}/v1/model").json()
    assert model["architecture"] == "resnet8" and model["class_names"] == list("0123456789")
    assert model["preprocess"]["input_size"] == [1, 8, 8]
    assert model["runtime"]["runtime"] == "torch" and model["serving"]["max_batch"] == 8
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "queued": 0}
    _post(url, b"not an image")
    r = httpx.get(f"{url}/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("reslab_requests_total", "reslab_request_seconds_bucket",
                 "reslab_batch_size_bucket", "reslab_images_total", "reslab_queue_images"):
        assert f"\n{name}" in text, name
    assert 'reslab_errors_total{api="v1",error="not_an_image"}' in text
    assert 'reslab_requests_total{api="v1",status="422"}' in text


def test_model_info_names_the_views_served_not_only_the_records(digits) -> None:
    """--flip/--translate override the record's test-time views: GET /v1/model's preprocess
    says what this server averages, so a client that reproduces its scores gets them right."""
    record_views = load_service(digits[0], "torch", max_batch=2).record.preprocess
    for flip, translate in ((not record_views.tta_flip, True), (None, None)):
        service = load_service(digits[0], "torch", max_batch=2, flip=flip, translate=translate)
        with ThreadServer(service.app(LIMITS)) as url:
            served_views = httpx.get(f"{url}/v1/model").json()["preprocess"]
        want_flip = record_views.tta_flip if flip is None else flip
        want_translate = record_views.tta_translate if translate is None else translate
        assert served_views["tta_flip"] is want_flip
        assert served_views.get("tta_translate", False) is want_translate


def test_metrics_count_every_rejected_request(served) -> None:
    """A query parameter FastAPI itself rejects (topk=abc) counts like topk=99 (issue 28)."""
    url, _ = served

    def count(line: str) -> float:
        text = httpx.get(f"{url}/metrics").text
        return next((float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                     if x.startswith(line + " ")), 0.0)

    errors, requests = 'reslab_errors_total{api="v1",error="bad_parameter"}', \
        'reslab_requests_total{api="v1",status="400"}'
    before = count(errors), count(requests)
    for topk in ("abc", "99"):
        assert _post(url, b"x", params={"topk": topk}).status_code == 400
    assert (count(errors), count(requests)) == (before[0] + 2, before[1] + 2)


# --- bad requests -----------------------------------------------------------------------------

def _bomb() -> bytes:
    """A valid PNG whose header claims 30000 x 30000 pixels (900 M) in a few dozen bytes."""
    png = bytearray(_png(Image.new("L", (8, 8))))
    png[16:24] = struct.pack(">II", 30000, 30000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _noise_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    return _png(Image.fromarray(rng.integers(0, 255, (side, side), np.uint8), "L"))


BAD = {  # case: (body, content type, status, code, message start)
    "not an image": (b"hello, world", "image/png", 422, "not_an_image",
                     "cannot read image 'body': cannot identify image file"),
    "truncated": (_noise_png(40)[:800], "image/png", 422, "truncated_image",
                  "cannot read image 'body': image file is truncated"),
    "decompression bomb": (_bomb(), "image/png", 422, "decompression_bomb",
                           "cannot read image 'body': Image size (900000000 pixels) exceeds"),
    "too many pixels": (_png(Image.new("L", (120, 120))), "image/png", 422, "too_many_pixels",
                        "image 'body' has too many pixels: 120 x 120 = 14,400, more than "
                        "10,000"),
    "body too large": (bytes(70 * 2**10), "image/png", 413, "body_too_large",
                       "request body of 71,680 bytes is larger than the server's limit of "
                       "65,536 bytes"),
    "wrong content type": (b"{}", "application/json", 415, "unsupported_media_type",
                           "content type 'application/json' is not an image"),
    "no content type": (_noise_png(8), None, 415, "unsupported_media_type",
                        "no content type: send one image as the body with its image/* content "
                        "type (image/png, image/jpeg, ...), or files as multipart/form-data"),
    "empty body": (b"", "image/jpeg", 400, "empty_body", "the request body is empty"),
    "multipart without files": (b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n"
                                b"1\r\n--x--\r\n", "multipart/form-data; boundary=x", 400,
                                "no_images", "the multipart body holds no files"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_naming_it_and_the_server_keeps_serving(served, digits,
                                                                      case) -> None:
    url, _ = served
    body, ctype, status, code, message = BAD[case]
    r = _post(url, body, ctype)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"].startswith(message), error
    assert _post(url, digits[1][0].read_bytes()).status_code == 200


def test_bad_parameter_and_unknown_route(served) -> None:
    url, _ = served
    r = _post(url, _noise_png(8), params={"topk": 11})
    assert r.status_code == 400 and r.json()["error"] == {
        "code": "bad_parameter",
        "message": "invalid topk 11: must be between 1 and 10 (the model's classes)"}
    r = _post(url, _noise_png(8), params={"topk": "x"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("invalid topk:")
    r = httpx.get(f"{url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"] == {"code": "not_found",
                                                          "message": "Not Found"}
    r = httpx.get(f"{url}/v2/nothing")  # the v2 protocol's error shape
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_a_full_queue_answers_503_with_retry_after(digits) -> None:
    """max_batch 1, max_queue 2: one image in the model (held there), two waiting, the next
    request is refused at once; the held and waiting ones are then answered."""
    service = load_service(digits[0], "torch", max_batch=1)
    entered, release = threading.Event(), threading.Event()

    def held(x: torch.Tensor) -> torch.Tensor:
        entered.set()
        assert release.wait(30)
        return service.forward(x)

    app = create_app(service.model, service.record, held,
                     ServeOptions(max_batch=1, max_wait_ms=0, max_queue=2), service.runtime)
    image = digits[1][0].read_bytes()
    with ThreadServer(app) as url, ThreadPoolExecutor(3) as pool:
        first = pool.submit(_post, url, image)
        assert entered.wait(30)
        waiting = [pool.submit(_post, url, image) for _ in range(2)]
        deadline = time.monotonic() + 30
        while app.state.batcher.queued < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = _post(url, image)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "overloaded"
        release.set()
        assert [f.result().status_code for f in [first, *waiting]] == [200, 200, 200]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'reslab_errors_total{api="v1",error="overloaded"} 1.0' in metrics


# --- the process --------------------------------------------------------------------------------

def test_sigterm_answers_requests_in_flight_and_exits_0(digits) -> None:
    """Three requests wait in a batch (max-wait 1 s) when SIGTERM comes: all three are
    answered, then the process exits 0 and the port is closed."""
    src = str(Path(reslab.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reslab", "serve", str(digits[0]), "--port",
                             "0", "--runtime", "torch", "--max-batch", "64", "--max-wait-ms",
                             "1000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving resnet8 (runtime torch) at http://127.0.0.1:"), (
            line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.rsplit(" at ", 1)[1].strip()
        image = digits[1][0].read_bytes()
        assert _post(url, image).status_code == 200  # up (this one waited its 1 s)
        with ThreadPoolExecutor(3) as pool:
            inflight = [pool.submit(_post, url, image) for _ in range(3)]
            time.sleep(0.3)  # they are in the server, waiting for their batch to fill
            assert not any(f.done() for f in inflight)
            proc.send_signal(signal.SIGTERM)
            assert [f.result().status_code for f in inflight] == [200, 200, 200]
        assert proc.wait(30) == 0
        assert "stopped: in-flight requests answered" in proc.stderr.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_flags_are_checked(digits, capsys) -> None:
    ckpt = digits[0]
    assert clean_error(capsys, ["serve", ckpt, "--max-batch", "0"]) == \
        "error: invalid max_batch 0: must be between 1 and 65,536"
    assert clean_error(capsys, ["serve", ckpt, "--max-body-mb", "0"]) == \
        "error: invalid max_body_mb 0.0: must be in (0, 4096]"
    assert clean_error(capsys, ["serve", ckpt, "--port", "70000"]) == \
        "error: invalid port 70000: must be between 0 and 65,535"
    assert clean_error(capsys, ["serve", ckpt, "--model-name", "a/b"]) == \
        "error: invalid model_name 'a/b': use 1-128 letters, digits, '.', '_' or '-', not " \
        "starting with '.'"
    taken = listen("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        assert clean_error(capsys, ["serve", ckpt, "--port", port]) == \
            f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    finally:
        taken.close()


# --- the page ---------------------------------------------------------------------------------

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-quic", "--no-first-run", "--disable-component-update",
                "--disable-sync")


@pytest.mark.skipif(not (shutil.which("chromium") and os.path.exists("/usr/bin/chromedriver")),
                    reason="Debian's chromium and chromium-driver are not installed "
                           "(.ci/run installs them)")
def test_upload_page_in_headless_chromium(served, digits, tmp_path, capsys) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = served
    ckpt, paths = digits
    assert main(["predict", str(ckpt), str(paths[1]), "--json", "--topk", "3",
                 "--runtime", "torch"]) == 0
    want = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "resnet8"))
        # nothing of a result shows before an upload (no empty images, no empty list)
        assert not driver.find_element(By.ID, "result").is_displayed()
        driver.find_element(By.ID, "file").send_keys(str(paths[1]))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#top li")))
        items = driver.find_elements(By.CSS_SELECTOR, "#top li")
        assert driver.find_element(By.ID, "result").is_displayed()
        assert [int(li.get_attribute("data-index")) for li in items] == \
            [t["index"] for t in want]
        assert items[0].text.startswith(f"{want[0]['class']} {100 * want[0]['prob']:.2f}%")
        cam = driver.find_element(By.ID, "cam")
        assert cam.get_attribute("src").startswith("data:image/png;base64,")
        assert driver.execute_script("return arguments[0].naturalWidth", cam) >= 200
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        driver.quit()


def test_serve_options_check_themselves() -> None:
    from reslab.errors import UserError

    with pytest.raises(UserError, match=r"^invalid max_queue 0: must be between 1 and"):
        ServeOptions(max_queue=0)
    with pytest.raises(UserError, match=r"^invalid max_wait_ms -1: must be in \[0, 10000\]$"):
        ServeOptions(max_wait_ms=-1)
    with pytest.raises(UserError, match=r"^invalid model_name '\.hidden'"):
        ServeOptions(model_name=".hidden")
    assert ServeOptions(max_body_mb=0.5).max_body_bytes == 2**19
