"""Soak (slow suite: ``pytest -m slow``): a long `jaxrl train` with frequent checkpoints keeps the
host process's memory flat and writes exactly one metrics row per iteration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

TOTAL_STEPS = 10_000_000  # PPO CartPole, 4 envs x 128 steps: 19,531 iterations
CHUNK = 200  # iterations per compiled chunk: ~98 chunks, one memory sample and progress line each
# A checkpoint at most every 10 s: ~15 saves in a run of ~2-3 minutes. (Saving through orbax's
# array items kept ~0.5-1 KB per array per save for good, inside tensorstore; jaxrl.checkpoint
# therefore writes the state as one file per dtype: ~1-2 KB per save remain.)
SAVE_SECONDS = 10


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_long_run_memory_stays_flat_and_metrics_grow_one_row_per_iteration(tmp_path):
    env = {**os.environ, "JAXRL_NO_COMPILE_CACHE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jaxrl.cli", "train", "ppo_cartpole", f"total_steps={TOTAL_STEPS}",
           "--chunk-size", str(CHUNK), "--checkpoint-every", "1", "--checkpoint-seconds", str(SAVE_SECONDS),
           "--keep", "2", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    samples: list[tuple[int, int, int]] = []  # (iterations done, resident bytes, metrics rows on disk)
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
    for line in proc.stdout:  # one plain progress line per chunk (stdout is not a terminal)
        if line.strip().startswith("iter"):
            done = int(line.split()[1].split("/")[0])
            (run_dir,) = tmp_path.iterdir()
            rows = sum(1 for _ in open(run_dir / "metrics.jsonl"))
            samples.append((done, _rss_bytes(proc.pid), rows))
    assert proc.wait() == 0, "".join(stderr)[-3000:]
    (run_dir,) = tmp_path.iterdir()
    iterations = TOTAL_STEPS // 512
    assert len(samples) == -(-iterations // CHUNK)
    # the metrics file grows by exactly one row per iteration, in order, as the run goes
    assert all(rows == done for done, _, rows in samples), samples[:5]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == iterations and [json.loads(x)["iteration"] for x in lines] == list(range(iterations))
    # resident memory after warm-up (the first quarter of the chunks): flat. The host keeps every
    # iteration's metrics (~15 floats per iteration, ~1 MB for the whole run); anything that grew
    # per chunk (a leak of device buffers, host copies of the state, saver threads: each chunk's
    # state is ~0.1 MB) would show as tens of MB over the ~70 chunks measured.
    done, rss, _ = map(np.array, zip(*samples))
    later = done >= done[len(done) // 4]
    growth = rss[later].max() - rss[later][0]
    slope = np.polyfit(done[later], rss[later], 1)[0] * CHUNK  # bytes per chunk
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"resident memory {rss[later][0] / 2**20:.0f} -> {rss[later].max() / 2**20:.0f} MiB after warm-up, "
          f"slope {slope / 2**10:.1f} KiB/chunk; {summary['env_steps_per_second']:,.0f} env steps/s")
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB after warm-up"
    assert slope < 64 * 2**10, f"resident memory grows by {slope / 2**10:.0f} KiB per chunk"
    assert summary["final_return_mean"] > 400 and summary["diverged_at"] == [None]
