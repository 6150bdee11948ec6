"""Tests for eval.report: tables and figures land on disk in the documented formats."""

import json
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from eval import report
from train import metrics


def test_write_table():
  with tempfile.TemporaryDirectory() as tmp:
    rows = [{"model": "ssim", "error": np.float32(0.25)}, {"model": "mse", "error": 0.5, "n": 3}]
    paths = metrics.write_table(rows, os.path.join(tmp, "out"), "probes", title="Probes")
    with open(paths["json"]) as f:
      data = json.load(f)
    assert data["columns"] == ["model", "error", "n"]
    assert data["rows"][0]["error"] == pytest.approx(0.25)
    with open(paths["md"]) as f:
      lines = f.read().splitlines()
    assert lines[0] == "# Probes"
    assert lines[2] == "| model | error | n |"
    assert lines[4] == "| ssim | 0.2500 |  |"


def test_reports_write_figures():
  with tempfile.TemporaryDirectory() as tmp:
    names, w = ["ssim", "mse", "mae"], np.array([[0.5, 0.8, 0.7], [0.3, 0.5, 0.6], [0.2, 0.4, 0.5]])
    paths = report.write_win_rate_report(names, w, tmp)
    curves = {"ssim": np.linspace(0.5, 0.4, 10), "mse": np.linspace(0.45, 0.35, 10)}
    paths.update({f"r_{k}": v for k, v in report.write_retrieval_report(curves, tmp).items()})
    for key in ("png", "r_png"):
      with Image.open(paths[key]) as image:
        assert image.format == "PNG" and min(image.size) > 100
    with open(paths["r_json"]) as f:
      data = json.load(f)
    assert data["columns"] == ["model", *[f"p@{j}" for j in range(1, 11)]]
    with open(paths["json"]) as f:
      assert json.load(f)["rows"][0]["vs_mse"] == pytest.approx(0.8)


def test_empty_table():
  with pytest.raises(ValueError, match="no rows"):
    metrics.write_table([], "/tmp", "x")
