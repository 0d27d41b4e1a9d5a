"""The one optimizer step (`alignkit.train.run`) and the run-folder guard."""

import pytest
import torch
from torch import nn

from alignkit.config import ConfigError, SFTConfig
from alignkit.train.run import check_output_dir, open_run


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 2)


def step_fn(module, batch):
    """Loss summed over the batch's rows (the units); only `used` takes part."""
    out = module.used(batch["x"])
    return (out**2).sum(), {}


@pytest.mark.parametrize("lean_memory", [True, False])
def test_a_parameter_without_gradient_is_not_decayed(tmp_path, lean_memory):
    """`unused` gets no gradient: AdamW must skip it (no weight decay, no moment update),
    as torch's AdamW does for a parameter whose .grad is None, even though lean_memory
    keeps its gradient buffer allocated. `used` moves exactly as a plain AdamW moves it
    on the same mean loss (matrices decayed, biases not)."""
    model = TwoLayers()
    expected = TwoLayers()
    # alignkit decays matrices only, not biases
    matrices = [expected.used.weight, expected.unused.weight]
    vectors = [expected.used.bias, expected.unused.bias]
    plain = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.5}, {"params": vectors, "weight_decay": 0.0}],
        lr=0.1,
    )
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    (expected.used(x) ** 2).sum().div(4).backward()
    plain.step()

    config = SFTConfig(
        data="unused.jsonl",
        output_dir=str(tmp_path / "run"),
        learning_rate=0.1,
        weight_decay=0.5,
        max_grad_norm=None,
        lr_schedule="constant",
        lean_memory=lean_memory,
    )
    before = model.unused.weight.detach().clone()
    with open_run(config, model, total_steps=1, fingerprint={}) as run:
        run.optimizer_step([{"x": x[:2]}, {"x": x[2:]}], step_fn, [2.0, 2.0])
        state = run.optimizer.state[model.unused.weight]
        assert float(state.get("step", 0)) == 0
    assert torch.equal(model.unused.weight, before)
    torch.testing.assert_close(model.used.weight, expected.used.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.used.bias, expected.used.bias, atol=1e-6, rtol=0)


def config_for(folder, **overrides):
    return SFTConfig(data="train.jsonl", output_dir=str(folder), **overrides)


def test_a_finished_run_is_not_overwritten(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("x: 1\n")
    for resume in (None, "auto"):
        with pytest.raises(ConfigError) as error:
            check_output_dir(config_for(tmp_path / "run", resume=resume))
        message = str(error.value)
        assert "a finished run (final/)" in message
        assert "overwrite=true" in message and "new output_dir" in message
        assert "resume=auto" not in message  # nothing to resume: no checkpoint


def test_a_finished_run_with_checkpoints_offers_to_resume(tmp_path):
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-2").mkdir(parents=True)
    with pytest.raises(ConfigError) as error:
        check_output_dir(config_for(tmp_path / "run"))
    message = str(error.value)
    assert "a finished run (final/)" in message
    assert "resume=auto" in message and "overwrite=true" in message and "new output_dir" in message


def test_foreign_checkpoints_are_not_mixed_with_a_new_run(tmp_path):
    (tmp_path / "run" / "checkpoints" / "step-2").mkdir(parents=True)
    with pytest.raises(ConfigError, match="another run's checkpoints"):
        check_output_dir(config_for(tmp_path / "run"))


def test_overwrite_removes_only_the_old_run(tmp_path):
    """overwrite=true: final/, checkpoints/, config.yaml and metrics.jsonl go; a user's
    own file in the folder stays."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "notes.txt").write_text("mine")
    config = config_for(run, overwrite=True, max_steps=1)
    assert sorted(check_output_dir(config)) == ["checkpoints", "final", "metrics.jsonl"]
    with open_run(config, nn.Linear(2, 2), total_steps=1, fingerprint={}):
        pass
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "notes.txt"]


def test_a_run_killed_before_its_first_checkpoint_restarts_with_resume_auto(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x: 1\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="another run"):
        check_output_dir(config_for(run))
    assert check_output_dir(config_for(run, resume="auto")) == ["config.yaml", "metrics.jsonl"]
