"""Predictor service: throughput under load against one-at-a-time serving (batching, load
shedding), HTTP against the forecaster called in-process, memory per adapter, time from an
alias flip to the first answer of the new version, inference during training.

Everything is real and runs in one go: a tracking server in a temporary folder, a random
base of `--size` saved in the hub format, five registered versions (LoRA rank 8 on every
block linear, each with its event embedding), and the service as a child process
(`python -m kronos_rolling.cli serve`). Parts (`--parts`, default: load):

load      one client sending requests one after another, then `--clients` clients sending
          at once for `--seconds` (a client that gets a 503 waits its Retry-After, as a polite
          client does): throughput against one-at-a-time, p50/p99 of the answered requests
          against the queue's limit (max_queue_wait_s: what an admitted request should wait
          at most), the 503s and any other error. Goal: ratio >= 5, p99 < the limit, no
          error but 503s.
latency   p50/p99 and throughput at concurrency 1 and 8, HTTP vs the same adapter loaded
          here (`fetch_adapter` + `load_forecast_model` + `Forecaster`), interleaved round by
          round; forecasts of both are checked to agree.
memory    RSS and parameter bytes of a service with 1 adapter vs all 4, each a fresh process.
flips     seconds from an alias flip (promotion, then rollback) to the first response naming
          the new version: pushed by a real MLflow webhook, then found by 1 s polling.
training  p50 latency while a training job (LoRA steps on the same base, holding the training
          lock) shares the CPU, and that job's step rate with and without requests.

    python bench/serve_latency.py                                   # load; Kronos-small shape, lookback 256
    python bench/serve_latency.py --lookback 64 --pred-len 64       # a horizon that outweighs its lookback
    python bench/serve_latency.py --parts latency memory flips training --flips 2 --train-seconds 10

Wall-clock figures on a shared machine depend on what else runs: the load average is printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kronos_rolling.names import registered_model_name  # noqa: E402

SYMBOLS = {"crypto": "BTCUSD", "forex_commodity": "EURUSD", "equity": "AAPL"}


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def make_base(folder: Path, size: str) -> Path:
    from kronos_rolling.model.config import MODEL_SIZES
    from kronos_rolling.model.kronos import Kronos
    from kronos_rolling.model.tokenizer import KronosTokenizer

    spec = MODEL_SIZES[size]
    torch.manual_seed(0)
    KronosTokenizer.from_config(spec.tokenizer).save_pretrained(folder / "tokenizer")
    Kronos.from_config(spec.predictor).save_pretrained(folder / "predictor")
    return folder


# -- probes run in their own process ----------------------------------------------------------


def memory_probe(labels: list[str]) -> None:
    """Start a service following `labels` (no watcher) and print its RSS and parameter bytes."""
    import psutil

    from dataclasses import replace

    from kronos_rolling.serve.service import PredictorService
    from kronos_rolling.settings import load_settings

    service = PredictorService(replace(load_settings().serve, labels=tuple(labels)), watch=False).start()
    gc.collect()
    pool = service.pool
    seen, parameter_bytes = set(), 0
    modules = [pool.peft if pool.peft is not None else pool.kronos, pool.tokenizer]
    modules += [a.event_embedding for a in pool.served.values()]
    for module in modules:
        for p in list(module.parameters()) + list(module.buffers()):
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                parameter_bytes += p.numel() * p.element_size()
    print(json.dumps({"labels": labels, "served": sorted(pool.served), "rss": psutil.Process().memory_info().rss,
                      "parameter_bytes": parameter_bytes}))


def train_probe(base: Path, seconds: float, threads: int) -> None:
    """Hold the training lock and run LoRA training steps on the base for `seconds`; print steps/s."""
    from kronos_rolling.locks import training_lock
    from kronos_rolling.model.kronos import Kronos, token_loss
    from kronos_rolling.model.lora import attach_lora

    torch.set_num_threads(threads)
    model = attach_lora(Kronos.from_pretrained(base / "predictor"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    vocab = 2 ** model.s1_bits
    def step():
        s1, s2, t1, t2 = (torch.randint(0, vocab, (8, 128), generator=generator) for _ in range(4))
        s1_logits, s2_logits = model(s1, s2, torch.zeros(8, 128, 5), use_teacher_forcing=True, s1_targets=t1)
        loss = token_loss(s1_logits, s2_logits, t1, t2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    from kronos_rolling.settings import load_settings

    with training_lock(load_settings().lock_dir, wait=False, job="bench-train-probe"):  # the service's KRONOS_LOCK_DIR
        print("locked", flush=True)
        step()  # warm-up: first-call allocations
        steps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            step()
            steps += 1
        print(json.dumps({"steps_per_s": steps / (time.perf_counter() - started)}), flush=True)


# -- the run ------------------------------------------------------------------------------------


class Service:
    def __init__(self, env: dict[str, str], log: Path):
        from kronos_rolling.tracking.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kronos_rolling.cli", "serve", "--port", str(self.port), "--log-level",
             "warning"], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"service did not start; see {log}")

    def stop(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)
        self.log.close()


def run_probe(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(call, requests_list, concurrency: int) -> tuple[list[float], float, list]:
    """Latencies of each call and the throughput (requests/s) at `concurrency`."""
    def timed(request):
        started = time.perf_counter()
        result = call(request)
        return time.perf_counter() - started, result

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:  # worker threads for both modes, as the service uses
        outcomes = list(pool.map(timed, requests_list))
    elapsed = time.perf_counter() - started
    return [o[0] for o in outcomes], len(requests_list) / elapsed, [o[1] for o in outcomes]


def load_part(url: str, bodies: list[dict], args, limits: dict) -> None:
    """One client one request at a time, then many at once; the goal's three figures."""
    encoded = [json.dumps(body).encode() for body in bodies]  # the clients' JSON work is not the service's
    headers = {"Content-Type": "application/json"}

    def post(session: requests.Session, index: int) -> tuple[int, float, float]:
        started = time.perf_counter()
        response = session.post(url + "/forecast", data=encoded[index % len(encoded)], headers=headers, timeout=600)
        retry = float(response.headers.get("Retry-After", 0)) if response.status_code == 503 else 0.0
        return response.status_code, time.perf_counter() - started, retry

    session = requests.Session()
    for i in range(2):
        post(session, i)  # warm: the first decodes allocate, and measure the rate the queue judges by
    started = time.perf_counter()
    serial = [post(session, 2 + i) for i in range(args.serial_requests)]
    serial_rate = len(serial) / (time.perf_counter() - started)
    assert all(status == 200 for status, _, _ in serial), serial

    outcomes: list[tuple[int, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + args.seconds

    def client(number: int) -> None:
        own, index = requests.Session(), number
        while time.perf_counter() < stop_at:
            try:
                status, seconds, retry = post(own, index)
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                outcomes.append((status, seconds))
            index += args.clients
            if status == 503:
                time.sleep(min(retry, max(0.0, stop_at - time.perf_counter())))
                # A connection idle past the service's keep-alive may be closed as the next request
                # goes out (a reset, not an answer): come back on a new one, as careful clients do.
                own.close()
                own = requests.Session()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    answered = [seconds for status, seconds in outcomes if status == 200]
    shed = [seconds for status, seconds in outcomes if status == 503]
    other = [status for status, _ in outcomes if status not in (200, 503)]
    queue = requests.get(url + "/health", timeout=30).json()["queue"]
    rate = len(answered) / elapsed
    print(f"\nload: {args.clients} clients for {elapsed:.0f}s against {args.serial_requests} requests one at a "
          f"time; max_batch_size {limits['max_batch_size']}, max_batch_wait_ms {limits['max_batch_wait_ms']:g}, "
          f"max_queue_wait_s {limits['max_queue_wait_s']:g}; load {load()}", flush=True)
    print("| clients | answered | requests/s | p50 ms | p99 ms | 503s | 503 p99 ms | other errors |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| 1 | {len(serial)} | {serial_rate:.2f} | {percentile([s for _, s, _ in serial], 50):.0f} | "
          f"{percentile([s for _, s, _ in serial], 99):.0f} | 0 | - | 0 |")
    print(f"| {args.clients} | {len(answered)} | {rate:.2f} | {percentile(answered, 50):.0f} | "
          f"{percentile(answered, 99):.0f} | {len(shed)} | {percentile(shed, 99) if shed else 0:.0f} | "
          f"{len(other) + len(errors)} |")
    p99 = percentile(answered, 99) / 1000
    print(f"  batches decoded: {queue['batches']} (mean {queue['batches'] and len(answered) / queue['batches']:.1f} "
          f"requests each over the load run and before); work units/s measured by the queue: {queue['work_per_s']}, "
          f"wait correction {queue['wait_correction_s']}s")
    print(f"  throughput {args.clients} clients / one at a time = {rate / serial_rate:.2f} (goal >= 5)")
    print(f"  p99 {p99:.2f}s against the queue limit {limits['max_queue_wait_s']:g}s "
          f"({'below' if p99 < limits['max_queue_wait_s'] else 'NOT below'}; goal: below)")
    print(f"  errors other than 503: {len(other) + len(errors)} (goal 0)"
          + (f": {sorted(set(map(str, other)))} {errors[:3]}" if other or errors else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["load"], choices=["load", "latency", "memory", "flips",
                                                                          "training"])
    parser.add_argument("--size", default="small", choices=["tiny", "mini", "small", "base"])
    parser.add_argument("--lookback", type=int, default=256)
    parser.add_argument("--pred-len", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per decode (the service's default 1)")
    parser.add_argument("--clients", type=int, default=64, help="load: clients sending at once")
    parser.add_argument("--seconds", type=float, default=60.0, help="load: how long they send")
    parser.add_argument("--serial-requests", type=int, default=16, help="load: requests sent one at a time")
    parser.add_argument("--max-batch-size", type=int, default=None, help="load: the service's (default: its own)")
    parser.add_argument("--max-batch-wait-ms", type=float, default=None, help="load: the service's")
    parser.add_argument("--max-queue-wait-s", type=float, default=None, help="load: the service's")
    parser.add_argument("--requests", type=int, default=64, help="latency: requests per mode and concurrency")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--flips", type=int, default=3, help="promotion+rollback pairs per flip mode")
    parser.add_argument("--train-seconds", type=float, default=40.0)
    parser.add_argument("--memory-probe", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--train-probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe is not None:
        return memory_probe(args.memory_probe)
    if args.train_probe is not None:
        return train_probe(Path(args.train_probe[0]), float(args.train_probe[1]), int(args.train_probe[2]))

    import mlflow
    from mlflow import MlflowClient
    from support.serve import bars_json, register_version, sample_frame, set_production

    from kronos_rolling.model.config import LoraSettings
    from kronos_rolling.settings import ServeSettings
    from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"size {args.size}, lookback {args.lookback}, pred_len {args.pred_len}, {args.threads} CPU thread(s) per "
          f"decode, parts {' '.join(args.parts)}, work folder {work}, load {load()}", flush=True)
    config = ServerConfig.embedded(work / "mlflow", port=free_port())
    config.env.update({"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                       "MLFLOW_WEBHOOK_CACHE_TTL": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    server = TrackingServer(config).start()
    services: list[Service] = []
    try:
        client = MlflowClient(server.url)
        base = make_base(work / "base", args.size)
        lora = LoraSettings()  # rank 8 on all seven block linears, as training uses
        example = sample_frame("BTCUSD", 48)
        t = time.perf_counter()
        for label, seed in (("crypto", 1), ("forex_commodity", 2), ("equity", 3), ("pooled", 4), ("crypto", 5)):
            register_version(client, base, label, seed, lora=lora, example=example, experiment="bench-serve")
        for label in ("crypto", "forex_commodity", "equity", "pooled"):
            set_production(client, label, "1")
        print(f"registered 5 versions in {time.perf_counter() - t:.0f}s", flush=True)
        (work / "data").mkdir()
        env = {**os.environ, "KRONOS_HOME": str(work / "home"), "KRONOS_LOCK_DIR": str(work / "locks"),
               "KRONOS_BASE_MODEL": str(base), "MLFLOW_TRACKING_URI": server.url,
               "KRONOS_DATA_DIR": str(work / "data"),
               "KRONOS_SERVE_BUSY_CHECK_S": "0.5", "KRONOS_SERVE_INFERENCE_THREADS": str(args.threads),
               "KRONOS_SERVE_MAX_BARS": str(max(args.lookback, 512)), "KRONOS_WEBHOOK_SECRET": "bench-secret"}
        limits = {}
        for name in ("max_batch_size", "max_batch_wait_ms", "max_queue_wait_s"):
            limits[name] = getattr(ServeSettings(), name) if getattr(args, name) is None else getattr(args, name)
            env[f"KRONOS_SERVE_{name.upper()}"] = str(limits[name])

        frame = sample_frame("BTCUSD", 4000)
        count = max(args.requests, args.serial_requests + 2, 256)
        starts = np.random.default_rng(0).integers(0, len(frame) - args.lookback, size=count)
        windows = [frame.iloc[s:s + args.lookback].reset_index(drop=True) for s in starts]
        options = {"pred_len": args.pred_len, "samples": 1, "temperature": 1.0, "top_k": 0, "top_p": 0.9}
        bodies = [{"symbol": "BTCUSD", "bars": bars_json(w), **options, "seed": i} for i, w in enumerate(windows)]

        if "memory" in args.parts:
            memory_part(env)
        if {"load", "latency", "flips", "training"} & set(args.parts):
            services.append(Service(env, work / "service.log"))
        if "load" in args.parts:
            load_part(services[-1].url, bodies, args, limits)
        if "latency" in args.parts:
            latency_part(services[-1].url, bodies, client, work, args)
        if "flips" in args.parts:
            flips_part(services, bodies, client, env, work, args)
        if "training" in args.parts:
            training_part(services[-1].url, bodies, base, env, args)
    finally:
        for service in services:
            service.stop()
        server.stop()
        mlflow.set_tracking_uri(None)


def http_caller(url: str, bodies: list[dict]):
    """A function that posts body i (one keep-alive connection per calling thread)."""
    local = threading.local()

    def http(index):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(url + "/forecast", json=bodies[index % len(bodies)], timeout=300)
        response.raise_for_status()
        return response.json()

    return http


def memory_part(env: dict) -> None:
    """RSS and parameter bytes: 1 adapter vs 4, each in a fresh process."""
    one = run_probe(["--memory-probe", "crypto"], env)
    four = run_probe(["--memory-probe", "crypto", "forex_commodity", "equity", "pooled"], env)
    assert one["served"] == ["crypto"] and len(four["served"]) == 4
    print(f"\nmemory, 1 adapter: RSS {one['rss'] / 2**20:.0f} MiB, parameters {one['parameter_bytes'] / 2**20:.1f} "
          f"MiB; 4 adapters: RSS {four['rss'] / 2**20:.0f} MiB, parameters "
          f"{four['parameter_bytes'] / 2**20:.1f} MiB", flush=True)
    print(f"  ratio 4/1: RSS {four['rss'] / one['rss']:.3f}, parameter bytes "
          f"{four['parameter_bytes'] / one['parameter_bytes']:.3f} (goal <= 1.2)", flush=True)


def latency_part(url: str, bodies: list[dict], client, work: Path, args) -> None:
    """HTTP vs in-process, same model, same requests, rounds interleaved."""
    from kronos_rolling.model.forecast import Forecaster
    from kronos_rolling.serve.schemas import Bar, series_of
    from kronos_rolling.tracking.adapters import fetch_adapter, load_forecast_model
    from kronos_rolling.tracking.context import Tracking

    source = fetch_adapter(f"models:/{registered_model_name('crypto')}@production",
                           Tracking.connect(client.tracking_uri), dst=work / "direct")
    loaded = load_forecast_model(source)
    direct = Forecaster(loaded.model, loaded.tokenizer, device="cpu", max_context=loaded.max_context,
                        event_embedding=loaded.event_embedding)
    # The in-process caller holds the bars as the DataFrame the service builds from the JSON.
    frames = [series_of(b["symbol"], [Bar(**row) for row in b["bars"]]).bars for b in bodies[:args.requests]]
    http = http_caller(url, bodies)

    def in_process(index):
        if torch.get_num_threads() != args.threads:
            torch.set_num_threads(args.threads)  # per thread, as the service sets it
        return direct.forecast(frames[index], args.pred_len, temperature=1.0, top_k=0, top_p=0.9,
                               seed=bodies[index]["seed"])

    check_http, check_direct = http(0), in_process(0)
    assert check_http["model"]["version"] == "1"
    np.testing.assert_allclose([r["close"] for r in check_http["forecast"]],
                               check_direct.mean["close"].to_numpy(), rtol=1e-4)
    http(1), in_process(1)  # warm both
    print(f"\nlatency, {args.requests} requests per cell (ms; throughput in requests/s), load {load()}", flush=True)
    print("| concurrency | mode | p50 | p99 | throughput |\n|---|---|---|---|---|")
    ratios = {}
    for concurrency in (1, 8):
        results = {"http": ([], []), "in-process": ([], [])}
        per_round = max(concurrency, 4)  # c=8: every round is one wave of 8 concurrent requests
        rounds = max(1, args.requests // per_round)
        for r in range(rounds):  # interleave the two modes, alternating which goes first
            chunk = list(range(r * per_round, (r + 1) * per_round))
            order = [("http", http), ("in-process", in_process)]
            for name, call in (order if r % 2 == 0 else order[::-1]):
                latencies, throughput, _ = measure(call, chunk, concurrency)
                results[name][0].extend(latencies)
                results[name][1].append(throughput)
        for name, (latencies, throughputs) in results.items():
            print(f"| {concurrency} | {name} | {percentile(latencies, 50):.1f} | {percentile(latencies, 99):.1f} "
                  f"| {np.mean(throughputs):.2f} |")
        ratios[concurrency] = (percentile(results["http"][0], 50) / percentile(results["in-process"][0], 50),
                               np.mean(results["in-process"][1]) / np.mean(results["http"][1]))
    for concurrency, (p50, throughput) in ratios.items():
        print(f"  concurrency {concurrency}: HTTP p50 / in-process p50 = {p50:.3f} (goal <= 1.10); "
              f"in-process / HTTP throughput = {throughput:.3f}", flush=True)


def flips_part(services: list, bodies: list[dict], client, env: dict, work: Path, args) -> None:
    """Alias flips: pushed by the webhook, then found by 1 s polling (a second service)."""
    from support.serve import set_production

    from kronos_rolling.registry.promotion import rollback

    print(f"\nalias flip -> first response from the new version (s), load {load()}", flush=True)
    small = {**bodies[0], "bars": bodies[0]["bars"][-64:], "pred_len": 2}  # flips, not forecasts, are timed
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def hammer(url: str):
        own = requests.Session()
        while not stop.is_set():
            body = own.post(url + "/forecast", json=small, timeout=60).json()
            seen.append((time.perf_counter(), body["model"]["version"]))

    def flip(action, target: str) -> float:
        mark = len(seen)
        started = time.perf_counter()
        action()
        while True:
            hit = [t for t, v in seen[mark:] if v == target]
            if hit:
                return hit[0] - started
            if time.perf_counter() - started > 60:
                raise RuntimeError(f"v{target} not served within 60s")
            time.sleep(0.005)

    url = services[-1].url
    thread = threading.Thread(target=hammer, args=(url,), daemon=True)
    thread.start()
    webhook = client.create_webhook(name="bench", url=url + "/webhooks/mlflow",
                                    events=["model_version_alias.created"], secret="bench-secret")
    time.sleep(2)  # the server's webhook cache (TTL 1 s)
    delays = {"webhook": [], "poll (1 s)": []}
    for mode in delays:
        if mode.startswith("poll"):
            # Found by polling: a service that polls every second.
            client.delete_webhook(webhook.webhook_id)
            stop.set()
            thread.join(timeout=60)
            services.append(Service({**env, "KRONOS_SERVE_POLL_INTERVAL_S": "1"}, work / "service-poll.log"))
            stop.clear()
            thread = threading.Thread(target=hammer, args=(services[-1].url,), daemon=True)
            thread.start()
        for _ in range(args.flips):
            delays[mode].append(flip(lambda: set_production(client, "crypto", "2"), "2"))
            delays[mode].append(flip(lambda: rollback(client, "crypto", "1", reason="bench",  # v1 came by hand
                                                      lock_dir=Path(env["KRONOS_LOCK_DIR"])), "1"))
    stop.set()
    thread.join(timeout=60)
    for mode, values in delays.items():
        print(f"  {mode}: median {np.median(values):.2f}, max {np.max(values):.2f} over {len(values)} flips")


def training_part(url: str, bodies: list[dict], base: Path, env: dict, args) -> None:
    """Inference while a training job on the same CPU holds the device."""
    http = http_caller(url, bodies)
    print(f"\ninference while a training job holds the device (c=1, ms), load {load()}", flush=True)
    idle, _, _ = measure(http, range(8), 1)
    alone = run_probe(["--train-probe", str(base), str(args.train_seconds), str(args.train_threads)], env)
    trainer = subprocess.Popen([sys.executable, __file__, "--train-probe", str(base), str(args.train_seconds),
                                str(args.train_threads)], env=env, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert trainer.stdout.readline().strip() == "locked"
    deadline = time.monotonic() + 10
    while not requests.get(url + "/health", timeout=10).json()["device"]["training_busy"]:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not see the training lock")
        time.sleep(0.1)
    device = requests.get(url + "/health", timeout=10).json()["device"]
    busy = []
    while trainer.poll() is None:
        latencies, _, _ = measure(http, range(4), 1)
        busy.extend(latencies)
    shared = json.loads(trainer.stdout.read().strip().splitlines()[-1])
    print(f"  p50 idle {percentile(idle, 50):.1f}, p50 while training {percentile(busy, 50):.1f} "
          f"({len(busy)} requests, all answered; while busy: {device['inference_threads']} inference "
          f"thread(s) at nice {device['inference_nice']})")
    print(f"  training steps/s alone {alone['steps_per_s']:.2f}, with requests {shared['steps_per_s']:.2f}")


if __name__ == "__main__":
    main()
