"""A user's own environment trained from the command line, exactly as the README shows it.

The module and the YAML config are taken from the README's "Your own environments" section, so
the documented example is what is tested: written to a fresh folder, trained by `jaxrl train`
run there as a subprocess (the console script, which does not put the current directory on
sys.path). A broken environment must stop the run with a clear message and exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JAXRL = Path(sys.executable).parent / "jaxrl"


def readme_block(first_line: str) -> str:
    """The fenced code block of README.md whose first line is `first_line`."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    matching = [b for b in blocks if b.splitlines()[0].strip() == first_line]
    assert len(matching) == 1, f"README.md needs exactly one code block starting with {first_line!r}"
    return matching[0]


def jaxrl_train(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAXRL_NO_COMPILE_CACHE": "1"}
    env.pop("PYTHONPATH", None)  # the module must be found because it is in the current directory
    return subprocess.run([str(JAXRL), "train", *args, "--quiet"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding the README's my_envs.py and corridor.yaml."""
    (tmp_path / "my_envs.py").write_text(readme_block("# my_envs.py"))
    (tmp_path / "corridor.yaml").write_text(readme_block("# corridor.yaml"))
    return tmp_path


def test_readme_custom_env_trains_from_yaml(project: Path):
    out = project / "runs"
    result = jaxrl_train(project, "corridor.yaml", "total_steps=16384", "--seeds", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    [run_dir] = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "config.yaml").read_text().count("my_envs:make_corridor") == 1
    # A random walk rarely reaches cell 7 of 8 within 40 steps (return about -0.4); walking right
    # gets there in 7 steps (0.94, less a little for slips).
    [final] = summary["final_return"]
    assert final is not None and final > 0.5, summary


BROKEN = '''
import jax.numpy as jnp
from my_envs import Corridor


class Broken(Corridor):
    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = super().step(key, state, action, params)
        return obs[:-1], state, reward[None], terminated.astype(jnp.int32), truncated, info


def make_broken(length: int = 5):
    return Broken(length)
'''


def test_broken_custom_env_stops_before_compiling(project: Path):
    (project / "broken_envs.py").write_text(textwrap.dedent(BROKEN))
    result = jaxrl_train(project, "ppo_cartpole", "env=broken_envs:make_broken", "--out", str(project / "runs"))
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "broken_envs:make_broken" in message and "3 problems" in message, message
    for problem in ["obs has shape (4,), but observation_space has shape (5,)",
                    "reward has shape (1,)", "terminated has dtype int32"]:
        assert problem in message, message
    assert "Traceback" not in message
