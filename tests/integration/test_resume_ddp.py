"""Exact resume after SIGKILL, and two DDP processes equal one (both as users run them)."""

import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file
from torch.testing import assert_close

from tests.conftest import read_metrics


def sft_command(model_dir, data, output_dir, *extra):
    return [
        "-m",
        "alignkit",
        "-q",
        "sft",
        f"model={model_dir}",
        f"data={data}",
        f"output_dir={output_dir}",
        "batch_size=8",
        "micro_batch_size=4",
        "learning_rate=1e-4",
        "log_every=1",
        *extra,
    ]


def run(args, **kwargs):
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_same_final(a, b, atol):
    wa, wb = (
        load_file(str(a / "final" / "model.safetensors")),
        load_file(str(b / "final" / "model.safetensors")),
    )
    assert wa.keys() == wb.keys()
    for key in wa:
        assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_sigkill_then_resume_auto_equals_the_uninterrupted_run(
    tiny_model_dir, mixed_length_sft_file, tmp_path
):
    steps = ["max_steps=24", "save_every=4"]
    run(sft_command(tiny_model_dir, mixed_length_sft_file, tmp_path / "straight", *steps))

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, *sft_command(tiny_model_dir, mixed_length_sft_file, killed, *steps)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-8").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "final").exists()

    run(sft_command(tiny_model_dir, mixed_length_sft_file, killed, *steps, "resume=auto"))
    assert_same_final(killed, tmp_path / "straight", atol=1e-6)
    logged = read_metrics(killed)
    assert [m["step"] for m in logged] == list(
        range(1, 25)
    )  # lines after the checkpoint were re-logged once
    straight = read_metrics(tmp_path / "straight")
    assert [m["loss"] for m in logged] == [m["loss"] for m in straight]


def test_resume_refuses_a_different_dataset(
    tiny_model_dir, mixed_length_sft_file, words_file, tmp_path
):
    run(
        sft_command(
            tiny_model_dir, mixed_length_sft_file, tmp_path / "run", "max_steps=4", "save_every=2"
        )
    )
    args = sft_command(
        tiny_model_dir,
        words_file,
        tmp_path / "run",
        "max_steps=4",
        "save_every=2",
        "resume=auto",
        "batch_size=16",
        "micro_batch_size=8",
    )
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert (
        "cannot resume from" in result.stderr
        and "use the same data, batch_size and seed" in result.stderr
    )


def test_two_ddp_processes_equal_one_process(tiny_model_dir, mixed_length_sft_file, tmp_path):
    common = ["max_steps=3", "save_every=2"]
    run(sft_command(tiny_model_dir, mixed_length_sft_file, tmp_path / "single", *common))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = sft_command(
        tiny_model_dir, mixed_length_sft_file, tmp_path / "ddp", *common, "micro_batch_size=2"
    )
    ddp_run = run(launcher + args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp_run.stdout.count("done:") == 1  # process 0 speaks and reports for the run
    assert (tmp_path / "ddp" / "report.html").is_file()
    assert_same_final(tmp_path / "ddp", tmp_path / "single", atol=1e-5)
    single, ddp = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(ddp, single, strict=True))
    assert (tmp_path / "ddp" / "checkpoints" / "step-2" / "rng.pt").is_file()
