"""Load test of `reslab serve` on loopback: throughput and p50/p95/p99 latency at several
concurrencies with dynamic batching on and off, through /v1/predict and the v2 protocol's infer,
against the offline batch throughput of the same runtime and threads, and a mixed run where 10%
of the requests are bad inputs (none may disturb the good).

    python benchmarks/serve.py --ckpt runs/fmnist-resnet20 [--concurrency 1 8 32] [--requests 400]
                               [--max-seconds 20] [--resnet50] [--protocols v1 v2]
                               [--out docs/results/inference-serving.json]
    python benchmarks/serve.py --resnet50 --threads 2 --out docs/results/inference-serving-resnet50.json

--resnet50 adds resnet50 at 224 px (random weights, JPEG uploads) at --resnet50-concurrency
(default 1 4 16) with --max-batch 16 on and 1 off, --resnet50-requests per run; without --ckpt
only resnet50 runs. A v2 request is what tritonclient sends by default: one image as a binary
BYTES tensor, binary outputs.

The server is a separate process (`reslab serve CKPT --port 0`, loopback only); the client is
asyncio + httpx in this one, each of C workers sending one request at a time (closed loop),
every run bounded by --requests and --max-seconds. Images are the checkpoint's test split as
PNG files, each request one image as the raw body. "Offline" is the same runtime on batches of
--max-batch images in this process: the model alone, and the whole path (PNG decode,
preparation, model) as `reslab predict` runs it.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from common import ROOT, RESULTS, prepare, print_table, save_results

COLUMNS = (("model", "model", ""), ("protocol", "API", ""), ("batching", "batching", ""),
           ("concurrency", "conc.", "d"), ("requests", "requests", "d"),
           ("img_s", "img/s", ".1f"), ("vs_offline", "vs offline", ".2f"),
           ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f"), ("p99_ms", "p99 ms", ".1f"),
           ("mean_batch", "mean batch", ".1f"), ("failed", "failed", "d"))


def batching(max_batch: int) -> dict[str, list[str]]:
    return {"on": ["--max-batch", str(max_batch), "--max-wait-ms", "5"],
            "off": ["--max-batch", "1", "--max-wait-ms", "0"]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, help="trained checkpoint (resnet20 on Fashion-MNIST "
                   "for the recorded numbers); without it, --resnet50 only")
    p.add_argument("--runtime", default="auto", choices=("torch", "onnxruntime", "auto"))
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=400, help="requests per run at most")
    p.add_argument("--max-seconds", type=float, default=20.0, help="seconds per run at most")
    p.add_argument("--images", type=int, default=256, help="distinct test images sent")
    p.add_argument("--resnet50", action="store_true", help="also resnet50 at 224 px (random "
                   "weights)")
    p.add_argument("--resnet50-concurrency", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--resnet50-requests", type=int, default=96, help="requests per resnet50 "
                   "run at most")
    p.add_argument("--protocols", nargs="+", choices=("v1", "v2"), default=["v1", "v2"],
                   help="/v1/predict, the v2 protocol's infer, or both")
    p.add_argument("--threads", type=int, help="torch threads in the server and offline")
    p.add_argument("--out", type=Path, default=RESULTS / "inference-serving.json")
    return p.parse_args()


def pngs(ckpt: Path, n: int) -> tuple[list[bytes], int]:
    """n test images of the checkpoint's dataset as PNG bytes, and the model's input side."""
    from reslab.weights.checkpoint import load_checkpoint
    from reslab.data import datasets

    _, record = load_checkpoint(ckpt)
    x, _ = getattr(datasets, record.data.spec.replace("-", "_"))().test
    out = []
    for img in x[:n]:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()).save(buf, "PNG")
        out.append(buf.getvalue())
    return out, record.preprocess.input_size[-1]


def random_checkpoint(name: str, size: int, folder: Path) -> Path:
    """A reslab weights file of `name` with random weights and a size x size record."""
    from reslab.models import create_model
    from reslab.weights.record import Record, save_weights

    torch.manual_seed(0)
    model = create_model(name).eval()
    record = Record.from_json({
        "architecture": name, "kwargs": {"num_classes": 1000, "in_chans": 3},
        "class_names": [f"class{i}" for i in range(1000)],
        "preprocess": {"input_size": [3, size, size], "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225], "crop_fraction": 0.875}})
    path = folder / f"{name}.safetensors"
    save_weights(path, model, record)
    return path


def offline(ckpt: Path, runtime: str, images: list[bytes], batch: int) -> dict[str, float]:
    """img/s of the runtime on batches of `batch`: the model alone and decode + prepare + model
    (the path `reslab predict` and the server take), best of 3."""
    from reslab.data.images import decode_image
    from reslab.deploy.predict import prepare_decoded
    from reslab.serve import load_service

    service = load_service(ckpt, runtime, max_batch=batch, threads=torch.get_num_threads())
    chunk = (images * (batch // len(images) + 1))[:batch]
    x = prepare_decoded(service.record, [decode_image(b, "x") for b in chunk])

    def model_only() -> None:
        with torch.inference_mode():
            service.forward(x)

    def whole() -> None:
        xs = prepare_decoded(service.record, [decode_image(b, "x") for b in chunk])
        with torch.inference_mode():
            service.forward(xs)

    out = {}
    for name, fn in (("model_img_s", model_only), ("end_to_end_img_s", whole)):
        fn()
        best = min(_seconds(fn, max(1, 128 // batch)) for _ in range(2))
        out[name] = round(batch / best, 1)
    out["runtime"] = service.runtime["runtime"]
    return out


def _seconds(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


MODEL_NAME = "bench"  # the served model's v2 name
Request = tuple[str, bytes, dict[str, str], int]  # path, body, headers, expected status


def v1_request(image: bytes, ctype: str) -> Request:
    return "/v1/predict", image, {"content-type": ctype}, 200


def v2_request(image: bytes) -> Request:
    """One image as tritonclient sends it by default: a binary BYTES tensor after the JSON,
    binary outputs asked for."""
    import json

    header = json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 + len(image)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return (f"/v2/models/{MODEL_NAME}/infer",
            header + len(image).to_bytes(4, "little") + image,
            {"inference-header-content-length": str(len(header)),
             "content-type": "application/octet-stream"}, 200)


class Server:
    """`reslab serve` in a subprocess on a free loopback port."""

    def __init__(self, ckpt: Path, runtime: str, flags: list[str], threads: int | None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        extra = ["--threads", str(threads)] if threads else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reslab", "serve", str(ckpt), "--host", "127.0.0.1",
             "--port", "0", "--runtime", runtime, "--max-pixels", "1000000", "--model-name",
             MODEL_NAME, *extra, *flags],
            stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if " at http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.url = line.rsplit(" at ", 1)[1].strip()
        self.note = line.split(" (", 1)[1].rsplit(") at ", 1)[0]

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else (values[0] if values else float("nan"))


async def load(url: str, bodies: list[Request], concurrency: int,
               requests: int, max_seconds: float) -> dict:
    """Closed-loop load: `concurrency` workers, each sending the next body when its last one is
    answered, until `requests` are sent or max_seconds pass. bodies: (path, body, headers,
    expected status). Returns latencies of the good answers and counts."""
    import httpx

    latencies: list[float] = []
    counts = {"sent": 0, "good_ok": 0, "good_failed": 0, "bad_answered_4xx": 0,
              "bad_unexpected": 0}
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def worker() -> None:
            while counts["sent"] < requests and time.perf_counter() < deadline:
                path, body, headers, want = bodies[counts["sent"] % len(bodies)]
                counts["sent"] += 1
                start = time.perf_counter()
                try:
                    r = await client.post(path, content=body, headers=headers)
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1
                if want == 200:
                    if status == 200:
                        latencies.append(time.perf_counter() - start)
                        counts["good_ok"] += 1
                    else:
                        counts["good_failed"] += 1
                elif 400 <= status < 500:
                    counts["bad_answered_4xx"] += 1
                else:
                    counts["bad_unexpected"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"latencies": latencies, "wall_s": wall, **counts}


def batch_totals(url: str) -> tuple[float, float]:
    """(images, model calls) so far, from the server's Prometheus batch-size histogram."""
    import httpx

    text = httpx.get(f"{url}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("reslab_batch_size_")}
    return values.get("reslab_batch_size_sum", 0.0), values.get("reslab_batch_size_count", 0.0)


def bad_bodies(good: bytes) -> list[Request]:
    """One of each bad-input class the server names (expected: a 4xx)."""
    big = io.BytesIO()
    Image.new("L", (1200, 1000)).save(big, "PNG")  # 1.2 M pixels > the run's --max-pixels
    bad = [v1_request(b, "image/png") for b in (b"not an image at all", good[: len(good) // 2],
                                                big.getvalue())]
    return [(path, body, headers, 422) for path, body, headers, _ in bad] + [
        ("/v1/predict", b"{}", {"content-type": "application/json"}, 415)]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_model(name: str, ckpt: Path, images: list[bytes], args: argparse.Namespace,
              concurrencies: list[int], max_batch: int, requests: int,
              ctype: str = "image/png") -> tuple[list[dict], dict, dict]:
    rows, offline_rates, mixed = [], {}, {}
    good = {"v1": [v1_request(b, ctype) for b in images], "v2": [v2_request(b) for b in images]}
    for mode, flags in batching(max_batch).items():
        server = Server(ckpt, args.runtime, flags, args.threads)
        try:
            chosen = server.note
            # the same runtime offline as the server chose (auto decides per process)
            runtime = "onnxruntime" if "onnxruntime" in chosen.split("(")[0] else "torch"
            key = f"{runtime}/b{flags[1]}"
            if key not in offline_rates:
                offline_rates[key] = offline(ckpt, runtime, images, int(flags[1]))
            for protocol in args.protocols:
                asyncio.run(load(server.url, good[protocol][:8], 4, 8, 10))  # warm-up
                for c in concurrencies:
                    rows.append(measure(server, good[protocol], c, requests, args) | {
                        "model": name, "protocol": protocol, "batching": mode,
                        "runtime": chosen})
                    base = offline_rates.get(f"{runtime}/b{max_batch}") or offline_rates[key]
                    img_s = rows[-1]["img_s"]
                    rows[-1]["vs_offline"] = round(img_s / base["end_to_end_img_s"], 3)
                    rows[-1]["vs_offline_model_only"] = round(img_s / base["model_img_s"], 3)
                    print(f"  {name} {protocol} batching {mode} c={c}: {img_s:.1f} img/s, p99 "
                          f"{rows[-1]['p99_ms']:.1f} ms", flush=True)
            if mode == "on":
                bad = bad_bodies(images[0])
                mixed_bodies = [bad[i // 10 % len(bad)] if i % 10 == 9
                                else good["v1"][i % len(images)] for i in range(400)]
                r = asyncio.run(load(server.url, mixed_bodies, max(concurrencies), requests,
                                     args.max_seconds))
                mixed = {"concurrency": max(concurrencies), "sent": r["sent"],
                         "good_ok": r["good_ok"], "good_failed": r["good_failed"],
                         "bad_answered_4xx": r["bad_answered_4xx"],
                         "bad_unexpected": r["bad_unexpected"],
                         "img_s": round(r["good_ok"] / r["wall_s"], 1),
                         "p99_ms": round(_percentile([1e3 * s for s in r["latencies"]], 99),
                                         2)}
                print(f"  mixed (10% bad): {mixed}", flush=True)
        finally:
            rc = server.stop()
        rows[-1]["server_exit_code"] = rc
    return rows, offline_rates, mixed


def measure(server: Server, bodies: list[Request], concurrency: int, requests: int,
            args: argparse.Namespace) -> dict:
    """One closed-loop run: throughput, latency percentiles, the mean batch the server formed
    and the CPU per request of server and client."""
    images0, calls0 = batch_totals(server.url)  # the histogram is cumulative
    cpu0, client0 = _cpu_s(server.proc.pid), time.process_time()
    r = asyncio.run(load(server.url, bodies, concurrency, requests, args.max_seconds))
    cpu1, client1 = _cpu_s(server.proc.pid), time.process_time()
    images1, calls1 = batch_totals(server.url)
    lat = [1e3 * s for s in r["latencies"]]
    return {"concurrency": concurrency, "requests": r["sent"],
            "img_s": round(r["good_ok"] / r["wall_s"], 2),
            "p50_ms": round(_percentile(lat, 50), 2), "p95_ms": round(_percentile(lat, 95), 2),
            "p99_ms": round(_percentile(lat, 99), 2),
            "mean_batch": round((images1 - images0) / max(1.0, calls1 - calls0), 2),
            "failed": r["good_failed"], "wall_s": round(r["wall_s"], 2),
            # CPU per request: what the machine's load does not change much
            "server_cpu_ms_per_request": round(1e3 * (cpu1 - cpu0) / max(1, r["sent"]), 2),
            "client_cpu_ms_per_request": round(1e3 * (client1 - client0) / max(1, r["sent"]),
                                               2)}


def resnet50_photos(n: int = 16) -> list[bytes]:
    """n JPEG files of 256 px noise: what the resnet50 runs upload."""
    rng = torch.Generator().manual_seed(0)
    photos = []
    for _ in range(n):
        pixels = torch.randint(0, 256, (256, 256, 3), generator=rng, dtype=torch.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos


def main() -> None:
    args = parse_args()
    if args.ckpt is None and not args.resnet50:
        raise SystemExit("error: give --ckpt, --resnet50 or both")
    prepare(args)
    rows, results = [], {"offline": {}, "mixed_bad_inputs": {}}
    if args.ckpt is not None:
        images, side = pngs(args.ckpt, args.images)
        rows, offline_rates, mixed = run_model(f"{args.ckpt.name} ({side} px)", args.ckpt,
                                               images, args, args.concurrency, 32,
                                               args.requests)
        results["offline"].update(offline_rates)
        results["mixed_bad_inputs"]["resnet20"] = mixed
    if args.resnet50:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = random_checkpoint("resnet50", 224, Path(tmp))
            r50, off50, mixed50 = run_model("resnet50 (224 px)", ckpt, resnet50_photos(), args,
                                            args.resnet50_concurrency, 16,
                                            args.resnet50_requests, "image/jpeg")
            rows += r50
            results["offline"].update({f"resnet50/{k}": v for k, v in off50.items()})
            results["mixed_bad_inputs"]["resnet50"] = mixed50
    results["rows"] = rows
    print_table("reslab serve on loopback (closed loop, one image per request)", rows, COLUMNS)
    setup = {"ckpt": args.ckpt.name if args.ckpt else None, "requested_runtime": args.runtime,
             "concurrency": args.concurrency, "requests_per_run": args.requests,
             "max_seconds_per_run": args.max_seconds, "distinct_images": args.images,
             "protocols": args.protocols,
             "batching": {k: " ".join(v) for k, v in batching(32).items()},
             "resnet50": None if not args.resnet50 else (
                 f"random weights, 224 px, JPEG uploads of 256 px noise, concurrency "
                 f"{args.resnet50_concurrency}, max batch 16 (on) or 1 (off), at most "
                 f"{args.resnet50_requests} requests per run"),
             "client": "asyncio + httpx in the benchmark process, closed loop; the server a "
                       "separate process on 127.0.0.1",
             "v2_request": "one image as a binary BYTES tensor (binary-data extension), "
                           "binary outputs: what tritonclient sends by default",
             "offline": "the same runtime and threads in the benchmark process at the "
                        "server's max batch: model alone, and decode + preparation + model",
             "mixed": "every 10th request bad (not an image, truncated PNG, too many pixels, "
                      "wrong content type, in turn)"}
    save_results("inference-serving", setup, results, out=args.out)


if __name__ == "__main__":
    main()
