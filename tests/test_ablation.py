"""benchmarks/ablation.py at a tiny size: the JSON it writes, and the variants' sizes matched."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from olm_edu.analysis import count_params
from olm_edu.models import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ablation.py"
TINY = ["--steps", "3", "--seeds", "0", "1", "--variants", "gpt2", "modern", "--embed-dim", "32", "--layers", "1",
        "--block-size", "16", "--batch-size", "4", "--eval-batches", "1", "--final-eval-batches", "2",
        "--speed-rounds", "2", "--speed-steps", "1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ablation") / "ablation.json"
    finished = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--out", str(out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "| variant" in finished.stdout and "reproduce: python benchmarks/ablation.py" in finished.stdout
    return json.loads(out.read_text(encoding="utf-8"))


def test_report_records_the_command_machine_and_recipe(report):
    assert report["command"].startswith("python benchmarks/ablation.py --steps 3")
    assert {"torch", "cpu", "threads_per_run", "parallel_runs"} <= set(report["machine"])
    assert report["recipe"]["steps"] == 3 and report["recipe"]["seeds"] == [0, 1]
    assert report["recipe"]["tokens_per_run"] == 3 * 4 * 16


def test_every_variant_has_per_seed_curves_final_losses_and_a_summary(report):
    assert list(report["variants"]) == ["gpt2", "modern"]
    for entry in report["variants"].values():
        assert [run["seed"] for run in entry["runs"]] == [0, 1]
        for run in entry["runs"]:
            assert len(run["train_loss"]) == 3 and run["val_steps"][-1] == 3
            assert len(run["val_loss"]) == len(run["val_steps"]) and run["final_val_loss"] > 0
        losses = [run["final_val_loss"] for run in entry["runs"]]
        assert entry["final_val_loss"]["mean"] == pytest.approx(sum(losses) / 2, abs=1e-5)
        assert entry["final_val_loss"]["sd"] == pytest.approx(abs(losses[0] - losses[1]) / 2**0.5, abs=1e-5)
        assert {"difference", "noise", "real"} <= set(entry["vs_baseline"])
        assert len(entry["speed"]["tokens_per_second_samples"]) == 2
        assert entry["memory"]["saved_activation_bytes"] > 0


def test_variants_are_parameter_matched_to_the_baseline(report):
    target = report["target_non_embedding"]
    for name, entry in report["variants"].items():
        counts = count_params(ModelConfig(**entry["config"]))  # the config is stored whole
        assert counts.non_embedding == entry["params"]["non_embedding"]
        assert abs(counts.non_embedding - target) <= 0.02 * target, name
    modern = report["variants"]["modern"]
    assert modern["knobs"]["position"] == ["learned", "rope"] and "hidden_dim" in modern["knobs"]
    assert modern["params"]["total"] < report["variants"]["gpt2"]["params"]["total"]  # no position table


def test_one_seed_is_refused(capsys):
    spec = importlib.util.spec_from_file_location("ablation_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.parse_args(["--seeds", "0"])
    assert exit_.value.code == 2 and "at least two different seeds" in capsys.readouterr().err
