"""Loggers write per-seed and aggregated series; missing optional back ends degrade cleanly."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from jaxrl.loggers import CsvLogger, JsonlLogger, TensorBoardLogger, log_all, make_loggers

CHUNK = {"env_steps": np.array([[512.0, 1024.0], [512.0, 1024.0]]),
         "episode_return": np.array([[10.0, np.nan], [20.0, 30.0]])}


def test_jsonl_and_csv(tmp_path):
    jsonl, table = JsonlLogger(tmp_path / "m.jsonl"), CsvLogger(tmp_path / "m.csv")
    log_all([jsonl, table], 0, CHUNK)
    log_all([jsonl, table], 2, CHUNK)
    jsonl.close(), table.close()
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["episode_return"] == [None, 30.0]
    with open(tmp_path / "m.csv") as f:
        table_rows = list(csv.DictReader(f))
    assert len(table_rows) == 4 * 3  # (2 seeds + mean) per iteration
    means = [r for r in table_rows if r["seed"] == "mean"]
    assert [float(r["episode_return"]) for r in means[:2]] == [15.0, 30.0]  # NaN ignored in the mean


def test_tensorboard_event_file(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log(0, CHUNK)
    logger.close()
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    data = events.read_bytes()
    assert b"mean/episode_return" in data and b"seed_1/episode_return" in data


def test_missing_backend_is_a_note_not_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    loggers = make_loggers(["jsonl", "wandb"], tmp_path)
    assert [type(x).__name__ for x in loggers] == ["JsonlLogger"]
    assert "wandb logging is off" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown logger"):
        make_loggers(["nope"], tmp_path)
