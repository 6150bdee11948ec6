"""eval.twoafc: the score table over every registry loss."""

import json
import os
import tempfile

import perceptual
from eval import twoafc as twoafc_eval
from perceptual import pretrained


def test_table_for_every_registry_loss():
  with tempfile.TemporaryDirectory() as out:
    results = twoafc_eval.main(twoafc_eval.Config(num_test=8, batch_size=8, out=out))
    expected = {n for n, loss in perceptual.LOSSES.items() if 3 in loss.channels}
    if not pretrained.weights_available("vgg"):
      expected.discard("lpips_vgg")  # skipped with a warning where its weights are not fetched
    assert expected <= set(results)
    for row in results.values():
      assert 0 <= row["mean"] <= 1 and "mixed" in row
    with open(os.path.join(out, "twoafc_scores.json")) as f:
      stored = json.load(f)
    assert stored["synthetic"] and "SYNTHETIC" in stored["data"]
    with open(os.path.join(out, "twoafc_scores.md")) as f:
      table = f.read()
    assert "SYNTHETIC" in table and "0.659" in table  # Czolbe et al.'s Watson-DFT column
    assert os.path.getsize(os.path.join(out, "twoafc_scores.png")) > 1000
