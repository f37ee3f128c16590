"""Tests for `olm-edu train` (olm_edu.training_run): flags, accumulation, checkpoints and resume.

Tiny models on a token file, in process; the multi-process runs are in test_distributed.py.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from olm_edu import checkpoint
from olm_edu.cli import main as cli_main
from olm_edu.training_run import RunSettings, main, parse_args, run

TINY = ["--set", "num_layers=1", "embed_dim=32", "num_heads=2", "hidden_dim=64", "max_seq_len=16"]


@pytest.fixture
def tokens(tmp_path):
    """A .npy token stream over 11 ids with some structure (a noisy counter)."""
    generator = np.random.default_rng(0)
    ids = (np.arange(4000) + (generator.random(4000) < 0.2)) % 11
    path = tmp_path / "tokens.npy"
    np.save(path, ids.astype(np.int32))
    return str(path)


def flags(tokens, out, *extra):
    return ["--data", tokens, "--out", str(out), "--batch-size", "8", "--block-size", "16", "--eval-every", "5",
            "--eval-batches", "2", "--no-progress", *TINY, *extra]


def weights(directory):
    return load_file(directory / "model.safetensors")


def test_train_command_writes_metrics_and_a_safetensors_checkpoint_and_the_loss_falls(tokens, tmp_path):
    assert main(flags(tokens, tmp_path / "run", "--steps", "30", "--lr", "1e-2")) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    val = [line["val_loss"] for line in lines if "val_loss" in line]
    assert len(losses) == 30 and len(val) == 7  # before step 1, then every 5 steps
    assert val[-1] < val[0] - 0.5
    final = tmp_path / "run" / "step-000030"
    assert sorted(p.name for p in final.iterdir()) == sorted(checkpoint.FILES)
    assert not list(final.glob("*.pt")) and not list(final.glob("*.bin"))
    assert json.loads((final / "trainer.json").read_text())["step"] == 30


def test_olm_edu_train_is_the_same_command(tokens, tmp_path):
    assert cli_main(["train", *flags(tokens, tmp_path / "a", "--steps", "2")]) == 0
    assert main(flags(tokens, tmp_path / "b", "--steps", "2")) == 0
    first, second = weights(tmp_path / "a" / "step-000002"), weights(tmp_path / "b" / "step-000002")
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_continues_bit_for_bit(tokens, tmp_path, optimizer):
    """2k steps in one go == k steps, a checkpoint, then k more steps from it in a new process state."""
    extra = ["--steps", "8", "--optimizer", optimizer, "--schedule", "wsd", "--set", "dropout=0.1"]
    assert main(flags(tokens, tmp_path / "whole", *extra, "--checkpoint-every", "4")) == 0
    torch.manual_seed(1234)  # the resumed run must not depend on the state it starts in
    assert main(["--resume", str(tmp_path / "whole" / "step-000004"), "--out", str(tmp_path / "resumed"),
                 "--no-progress"]) == 0
    whole, resumed = weights(tmp_path / "whole" / "step-000008"), weights(tmp_path / "resumed" / "step-000008")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    halfway = weights(tmp_path / "whole" / "step-000004")
    assert not all(torch.equal(whole[name], halfway[name]) for name in whole)  # it did train after the checkpoint
    saved = load_file(tmp_path / "whole" / "step-000008" / "optimizer.safetensors")
    again = load_file(tmp_path / "resumed" / "step-000008" / "optimizer.safetensors")
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)


def test_gradient_accumulation_over_4_micro_batches_equals_one_big_batch(tokens, tmp_path):
    for accum in (1, 4):
        assert main(flags(tokens, tmp_path / f"accum{accum}", "--steps", "1", "--grad-accum", str(accum),
                          "--warmup-steps", "0")) == 0
    big, accumulated = weights(tmp_path / "accum1" / "step-000001"), weights(tmp_path / "accum4" / "step-000001")
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-5, atol=1e-6)
    moved = max((big[name] - weights_at_init(tokens, tmp_path)[name]).abs().max() for name in big)
    assert moved > 1e-3  # a real step was taken


def weights_at_init(tokens, tmp_path):
    out = tmp_path / "init"
    if not out.exists():
        main(flags(tokens, out, "--steps", "1", "--lr", "1e-30", "--weight-decay", "0"))
    return weights(out / "step-000001")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--optimizer", "sgd"], "--optimizer"),
        (["--dtype", "fp8"], "--dtype"),
        (["--parallel", "ddp"], "--parallel ddp needs several processes"),
        (["--batch-size", "6", "--grad-accum", "4"], "--batch-size=6"),
        (["--block-size", "64"], "--block-size=64"),
        (["--muon-lr", "0.01"], "--muon-lr needs --optimizer muon"),
        (["--warmup-steps", "50", "--steps", "10"], "--warmup-steps=50"),
        (["--compile", "--checkpoint-activations"], "--compile"),
        (["--set", "num_layer=3"], "num_layer"),
        (["--data", "nowhere.npy"], "--data"),
        (["--resume", "nowhere"], "nowhere is not a training checkpoint"),
    ],
)
def test_bad_flags_get_an_error_naming_the_flag(tokens, tmp_path, capsys, argv, flag):
    argv = flags(tokens, tmp_path / "bad", *argv)
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's own refusal of a value outside `choices`
        status = exit.code
    assert status == 2
    assert flag in capsys.readouterr().err


def test_muon_with_fsdp_is_refused_naming_both_flags():
    with pytest.raises(ValueError, match="--optimizer muon does not work with --parallel fsdp"):
        RunSettings(optimizer="muon", parallel="fsdp").validate(world_size=2)
    with pytest.raises(ValueError, match="choose --parallel ddp or --parallel fsdp"):
        RunSettings().validate(world_size=2)


def test_resume_refuses_to_change_the_maths(tokens, tmp_path, capsys):
    assert main(flags(tokens, tmp_path / "run", "--steps", "2")) == 0
    status = main(["--resume", str(tmp_path / "run" / "step-000002"), "--lr", "0.1", "--no-progress"])
    assert status == 2 and "--lr cannot change" in capsys.readouterr().err


def test_bf16_autocast_and_activation_checkpointing_train(tokens, tmp_path):
    for name, extra in {"plain": [], "ckpt": ["--checkpoint-activations"]}.items():
        assert main(flags(tokens, tmp_path / name, "--steps", "2", *extra)) == 0
    plain, recomputed = weights(tmp_path / "plain" / "step-000002"), weights(tmp_path / "ckpt" / "step-000002")
    for name in plain:  # recomputing the activations changes nothing in the maths
        torch.testing.assert_close(recomputed[name], plain[name], rtol=0, atol=0)
    history = run(parse_args(flags(tokens, tmp_path / "bf16", "--steps", "5", "--dtype", "bf16", "--lr", "1e-2"))[0])
    assert history["val_loss"][-1] < history["val_loss"][0]
