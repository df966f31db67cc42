"""Predictor service: HTTP against the forecaster called in-process, memory per adapter,
time from an alias flip to the first answer of the new version, inference during training.

Everything is real and runs in one go: a tracking server in a temporary folder, a random
base of `--size` saved in the hub format, five registered versions (LoRA rank 8 on every
block linear, each with its event embedding), and the service as a child process
(`python -m kronos_rolling.serve serve`). The reference is the very same adapter loaded
here (`fetch_adapter` + `load_forecast_model` + `Forecaster`), fed the same requests:

1. latency p50/p99 and throughput at concurrency 1 and 8, HTTP vs in-process, the two
   interleaved round by round so that load from other jobs hits both alike; forecasts of
   both are checked to agree;
2. memory (RSS and parameter bytes) of a service with 1 adapter vs all 4, each in a fresh
   process (`--memory-probe`);
3. seconds from an alias flip (promotion, then rollback) to the first response naming
   the new version: pushed by a real MLflow webhook, then found by polling (a second
   service that polls every second; the latency runs use the default 30 s);
4. p50 latency while a training job (`--train-probe`: LoRA steps on the same base, holding
   the training lock) shares the CPU, and that job's step rate with and without requests.

    python bench/serve_latency.py                     # Kronos-small shape, ~7 min on 2 cores
    python bench/serve_latency.py --size mini --requests 16   # quicker

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

    from kronos_rolling.serve.service import PredictorService
    from kronos_rolling.settings import ServeSettings

    service = PredictorService(ServeSettings.from_env(labels=tuple(labels)), watch=False).start()
    gc.collect()
    pool = service.pool
    seen, parameter_bytes = set(), 0
    modules = [pool.peft if pool.peft is not None else pool.kronos, pool.tokenizer]
    modules += [a.forecaster.event_embedding for a in pool.served.values()]
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

    with training_lock(wait=False, job="bench-train-probe"):
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
            [sys.executable, "-m", "kronos_rolling.serve", "serve", "--port", str(self.port), "--log-level",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "mini", "small", "base"])
    parser.add_argument("--lookback", type=int, default=256)
    parser.add_argument("--pred-len", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64, help="requests per mode and concurrency")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per forecast, both modes")
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
    from serve_support import bars_json, register_version, sample_frame, set_production

    from kronos_rolling.model.config import LoraSettings
    from kronos_rolling.model.forecast import Forecaster
    from kronos_rolling.registry.promotion import rollback
    from kronos_rolling.serve.schemas import Bar, series_of
    from kronos_rolling.tracking.adapters import fetch_adapter, load_forecast_model
    from kronos_rolling.tracking.server import ServerConfig, TrackingServer, free_port

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"size {args.size}, lookback {args.lookback}, pred_len {args.pred_len}, {args.threads} CPU thread(s) per "
          f"forecast, trainer {args.train_threads}, "
          f"work folder {work}, load {load()}", flush=True)
    config = ServerConfig.embedded(work / "mlflow", port=free_port())
    config.env.update({"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                       "MLFLOW_WEBHOOK_CACHE_TTL": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    server = TrackingServer(config).start()
    service = None
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

        # -- memory: 1 adapter vs 4, each in a fresh process --------------------------------
        one = run_probe(["--memory-probe", "crypto"], env)
        four = run_probe(["--memory-probe", "crypto", "forex_commodity", "equity", "pooled"], env)
        assert one["served"] == ["crypto"] and len(four["served"]) == 4
        print(f"\nmemory, 1 adapter: RSS {one['rss'] / 2**20:.0f} MiB, parameters {one['parameter_bytes'] / 2**20:.1f} "
              f"MiB; 4 adapters: RSS {four['rss'] / 2**20:.0f} MiB, parameters "
              f"{four['parameter_bytes'] / 2**20:.1f} MiB", flush=True)
        print(f"  ratio 4/1: RSS {four['rss'] / one['rss']:.3f}, parameter bytes "
              f"{four['parameter_bytes'] / one['parameter_bytes']:.3f} (goal <= 1.2)", flush=True)

        # -- latency: HTTP vs in-process, same model, same requests -----------------------
        service = Service(env, work / "service.log")
        source = fetch_adapter(f"models:/{registered_model_name('crypto')}@production", client, dst=work / "direct")
        loaded = load_forecast_model(source)
        direct = Forecaster(loaded.model, loaded.tokenizer, device="cpu", max_context=loaded.max_context,
                            event_embedding=loaded.event_embedding)
        frame = sample_frame("BTCUSD", 4000)
        starts = np.random.default_rng(0).integers(0, len(frame) - args.lookback, size=args.requests)
        windows = [frame.iloc[s:s + args.lookback].reset_index(drop=True) for s in starts]
        options = {"pred_len": args.pred_len, "samples": 1, "temperature": 1.0, "top_k": 0, "top_p": 0.9}
        bodies = [{"symbol": "BTCUSD", "bars": bars_json(w), **options, "seed": i} for i, w in enumerate(windows)]
        # The in-process caller holds the bars as the DataFrame the service builds from the JSON.
        frames = [series_of(b["symbol"], [Bar(**row) for row in b["bars"]]).bars for b in bodies]
        local = threading.local()

        def http(index):
            if not hasattr(local, "session"):
                local.session = requests.Session()  # one keep-alive connection per client thread
            response = local.session.post(service.url + "/forecast", json=bodies[index], timeout=300)
            response.raise_for_status()
            return response.json()

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
        print(f"\nlatency, {args.requests} requests per cell (ms; throughput in requests/s), load {load()}",
              flush=True)
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

        # -- alias flips: pushed by the webhook, then found by polling -----------------------
        print(f"\nalias flip -> first response from the new version (s), load {load()}", flush=True)
        small = {**bodies[0], "bars": bodies[0]["bars"][-64:], "pred_len": 2}  # flips, not forecasts, are timed
        seen: list[tuple[float, str]] = []
        stop = threading.Event()

        def hammer():
            own = requests.Session()
            while not stop.is_set():
                body = own.post(service.url + "/forecast", json=small, timeout=60).json()
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

        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        webhook = client.create_webhook(name="bench", url=service.url + "/webhooks/mlflow",
                                        events=["model_version_alias.created"], secret="bench-secret")
        time.sleep(2)  # the server's webhook cache (TTL 1 s)
        delays = {"webhook": [], "poll (1 s)": []}
        for mode in delays:
            if mode.startswith("poll"):
                # Found by polling: a service that polls every second (latency was measured at the
                # default 30 s: each poll costs the forecasting thread a little of the GIL).
                client.delete_webhook(webhook.webhook_id)
                stop.set()
                thread.join(timeout=60)
                service.stop()
                service = None
                service = Service({**env, "KRONOS_SERVE_POLL_INTERVAL_S": "1"}, work / "service-poll.log")
                stop.clear()
                thread = threading.Thread(target=hammer, daemon=True)
                thread.start()
            for _ in range(args.flips):
                delays[mode].append(flip(lambda: set_production(client, "crypto", "2"), "2"))
                delays[mode].append(flip(lambda: rollback(client, "crypto", reason="bench"), "1"))
        stop.set()
        thread.join(timeout=60)
        for mode, values in delays.items():
            print(f"  {mode}: median {np.median(values):.2f}, max {np.max(values):.2f} over {len(values)} flips")

        # -- a training job on the same CPU ----------------------------------------------------
        print(f"\ninference while a training job holds the device (c=1, ms), load {load()}", flush=True)
        idle, _, _ = measure(http, range(8), 1)
        alone = run_probe(["--train-probe", str(base), str(args.train_seconds), str(args.train_threads)], env)
        trainer = subprocess.Popen([sys.executable, __file__, "--train-probe", str(base), str(args.train_seconds),
                                    str(args.train_threads)], env=env, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert trainer.stdout.readline().strip() == "locked"
        deadline = time.monotonic() + 10
        while not requests.get(service.url + "/health", timeout=10).json()["device"]["training_busy"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not see the training lock")
            time.sleep(0.1)
        device = requests.get(service.url + "/health", timeout=10).json()["device"]
        busy = []
        while trainer.poll() is None:
            latencies, _, _ = measure(http, range(4), 1)
            busy.extend(latencies)
        shared = json.loads(trainer.stdout.read().strip().splitlines()[-1])
        print(f"  p50 idle {percentile(idle, 50):.1f}, p50 while training {percentile(busy, 50):.1f} "
              f"({len(busy)} requests, all answered; while busy: {device['inference_threads']} inference "
              f"thread(s) at nice {device['inference_nice']})")
        print(f"  training steps/s alone {alone['steps_per_s']:.2f}, with requests {shared['steps_per_s']:.2f}")
    finally:
        if service is not None:
            service.stop()
        server.stop()
        mlflow.set_tracking_uri(None)


if __name__ == "__main__":
    main()
