"""Serve throughput: the huggingface_hub client through ``fiun-hub serve`` on loopback, against LocalHub directly.

One 64 MiB safetensors file (a random float32 tensor), in the same run:

- download: ``hf_hub_download`` through the server (HEAD + GET into a fresh client cache) against reading the
  same blob straight from the LocalHub (``LocalHub.read_file``) and against copying the blob to a file
  (``shutil.copyfile``: the end state of a download); a plain ``urllib`` GET of the same URL into a file shows
  how much of the difference is the server and how much the client's HTTP stack;
- upload: ``HfApi.upload_file`` through the server (client sha256, preupload, LFS batch, PUT with the server's
  sha256 check (a 64 MiB object is held in memory until its commit), NDJSON commit, ``LocalHub.publish`` of the
  verified bytes) against ``LocalHub.publish`` of the same file (each round into a fresh repo, so nothing is
  deduplicated).

Each measurement is repeated (default 5 rounds, interleaved) and the median is reported, with throughput ratios
(served / direct). The server is a real ``fiun-hub serve`` subprocess (uvicorn + h11, one worker).

Writes ``benchmarks/results/serve_throughput.json`` and prints the command and the numbers.

Run:  python benchmarks/serve_throughput.py                  (about 30 s on 2 CPU cores)
      python benchmarks/serve_throughput.py --mb 8 --rounds 1 (smoke test)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# The client must talk to the loopback server (and nowhere else): online, no Xet, no telemetry. main() also gives
# it a private HF_HOME; huggingface_hub is imported only after that.
os.environ.update({"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
os.environ.pop("HF_TOKEN", None)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fiun_hub.hub.local import LocalHub, RepoChange  # noqa: E402

TOKEN = "bench-token"
RESULTS = ROOT / "benchmarks" / "results" / "serve_throughput.json"


def machine_info() -> dict:
    import huggingface_hub
    import starlette
    import uvicorn

    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "huggingface_hub": huggingface_hub.__version__, "starlette": starlette.__version__,
            "uvicorn": uvicorn.__version__, "gpu": gpu}


def make_file(path: Path, mb: int) -> Path:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({"weight": torch.randn(mb * (1 << 20) // 4)}, str(path))
    return path


def start_server(hub: Path, log: Path) -> tuple[subprocess.Popen, str]:
    from fiun_hub.serve import spawn

    env = {k: v for k, v in os.environ.items() if k not in ("FIUN_HUB", "FIUN_HUB_TOKEN")}
    return spawn(hub, log, "--token", TOKEN, env=env)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="file size in MiB (default 64)")
    ap.add_argument("--rounds", type=int, default=5, help="repetitions of each measurement (default 5)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    command = "python benchmarks/serve_throughput.py" + "".join(f" {a}" for a in sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="fiun-serve-bench-"))
    os.environ["HF_HOME"] = str(tmp / "hf-home")
    try:
        result = measure(args, command, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(result, args.out)


def measure(args, command: str, tmp: Path) -> dict:
    from huggingface_hub import HfApi, hf_hub_download

    hub = LocalHub.init(tmp / "hub")
    src = make_file(tmp / "model.safetensors", args.mb)
    size = src.stat().st_size
    proc, url = start_server(hub.root, tmp / "server.log")
    api = HfApi(endpoint=url, token=TOKEN)
    times: dict[str, list[float]] = {k: [] for k in ("upload_served", "upload_direct", "download_served",
                                                     "download_served_raw", "download_direct_read",
                                                     "download_direct_copy")}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def raw_get(repo: str, dst: Path) -> None:
        with opener.open(f"{url}/{repo}/resolve/main/model.safetensors") as r, open(dst, "wb") as out:
            shutil.copyfileobj(r, out, 1 << 20)
    try:
        # Warm-up (imports, first connection, page cache of the source file), not timed.
        api.create_repo("bench/warm")
        api.upload_file(path_or_fileobj=str(src), path_in_repo="model.safetensors", repo_id="bench/warm")
        hf_hub_download("bench/warm", "model.safetensors", endpoint=url, cache_dir=tmp / "warm-cache", token=False)
        for r in range(args.rounds):
            served, direct = f"bench/served-{r}", f"bench/direct-{r}"
            api.create_repo(served)
            times["upload_served"].append(timed(lambda: api.upload_file(
                path_or_fileobj=str(src), path_in_repo="model.safetensors", repo_id=served,
                commit_message="upload through serve")))
            times["upload_direct"].append(timed(lambda: hub.publish([RepoChange(
                direct, files={"model.safetensors": src}, message="direct publish")])))
            assert hub.list_files(served)["model.safetensors"] == hub.list_files(direct)["model.safetensors"]

            cache = tmp / f"cache-{r}"
            times["download_served"].append(timed(lambda: hf_hub_download(
                served, "model.safetensors", endpoint=url, cache_dir=cache, token=False)))
            got = Path(hf_hub_download(served, "model.safetensors", endpoint=url, cache_dir=cache, token=False))
            assert got.stat().st_size == size
            raw = tmp / f"raw-{r}.safetensors"
            times["download_served_raw"].append(timed(lambda: raw_get(served, raw)))
            assert raw.stat().st_size == size
            raw.unlink()
            times["download_direct_read"].append(timed(lambda: hub.read_file(direct, "model.safetensors")))
            dst = tmp / f"copy-{r}.safetensors"
            blob = hub.file_path(direct, "model.safetensors")
            times["download_direct_copy"].append(timed(lambda: shutil.copyfile(blob, dst)))
            shutil.rmtree(cache, ignore_errors=True)
            dst.unlink()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    med = {k: statistics.median(v) for k, v in times.items()}
    mbps = {k: size / (1 << 20) / v for k, v in med.items()}
    ratios = {
        "download_served_vs_read": mbps["download_served"] / mbps["download_direct_read"],
        "download_served_vs_copy": mbps["download_served"] / mbps["download_direct_copy"],
        "download_raw_get_vs_copy": mbps["download_served_raw"] / mbps["download_direct_copy"],
        "upload_served_vs_publish": mbps["upload_served"] / mbps["upload_direct"],
    }
    return {"command": command, "machine": machine_info(), "file_mib": size / (1 << 20), "rounds": args.rounds,
            "seconds": times, "median_seconds": med, "mib_per_s": mbps, "ratios": ratios}


def report(result: dict, out: str) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    command, med, mbps, ratios = result["command"], result["median_seconds"], result["mib_per_s"], result["ratios"]
    size, rounds = result["file_mib"] * (1 << 20), result["rounds"]

    print(f"$ {command}")
    print(f"{size / (1 << 20):.0f} MiB safetensors, {rounds} rounds (median), "
          f"{os.cpu_count()} CPU cores, GPU: {result['machine']['gpu'] or 'none'}")
    print("| measurement | median s | MiB/s |")
    print("|---|---:|---:|")
    labels = {"download_served": "hf_hub_download through serve",
              "download_served_raw": "plain HTTP GET through serve (urllib, to a file)",
              "download_direct_read": "LocalHub.read_file",
              "download_direct_copy": "copy of the blob (shutil.copyfile)",
              "upload_served": "HfApi.upload_file through serve", "upload_direct": "LocalHub.publish"}
    for k, label in labels.items():
        print(f"| {label} | {med[k]:.3f} | {mbps[k]:.0f} |")
    print(f"download: served / read_file = {ratios['download_served_vs_read']:.2f}x, "
          f"served / copy = {ratios['download_served_vs_copy']:.2f}x; "
          f"plain GET / copy = {ratios['download_raw_get_vs_copy']:.2f}x")
    print(f"upload: served / publish = {ratios['upload_served_vs_publish']:.2f}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
