"""What a new user sees first: ``coattn --help``, a tiny fit's stderr without the notes coattn causes on
purpose, and the CPU thread policy (coattn/train/threads.py)."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from coattn.cli import SUMMARY, TOOLS, TRAINING, main
from tests.reliability_helpers import coattn_cmd, subprocess_env, tiny_fit_args

BENIGN = ("litlogger", "exists and is not empty", "module(s) in eval mode", "overridden `on_after_batch_transfer`")


def test_help_lists_every_command_on_one_line_each(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in [*TRAINING, *TOOLS, "make demo", "make test"]:
        hits = [line for line in lines if line.strip().startswith(name + " ")]
        assert len(hits) == 1 and len(hits[0].split(name, 1)[1].strip()) > 10, (name, out)
    assert set(SUMMARY) == set(TOOLS)  # a new tool needs its line
    assert "dispatched from one entry point" not in out  # the developer docstring stays in the source
    assert max(map(len, lines)) <= 100
    assert main([]) == 2 and "make demo" in capsys.readouterr().out


def test_tiny_fit_and_resume_print_none_of_the_benign_lightning_notes(tiny_clotho, tmp_path):
    """A fresh fit (frozen audio tower: eval mode on purpose; the run-folder lock in the checkpoint folder)
    and its resume (checkpoint folder not empty): none of the four notes; real warnings still pass."""
    def fit(*extra: str) -> str:
        proc = subprocess.run([*coattn_cmd(), "fit", *tiny_fit_args(tiny_clotho, epochs=1, steps=2), *extra],
                              cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    errs = [fit(), fit("--trainer.max_epochs=2", "--ckpt_path", "last")]
    for err in errs:
        found = [note for note in BENIGN if note in err]
        assert not found, (found, err[-3000:])
    assert "Restoring states from the checkpoint" in errs[1]  # it did resume (so the folder was not empty)


def test_eval_mode_note_stays_for_a_module_left_in_eval_by_mistake():
    from coattn.train import quiet

    class Held(torch.nn.Module):  # keeps its child in eval on purpose, as the encoders do
        def __init__(self):
            super().__init__()
            self.child = torch.nn.Dropout(0.1)

        def train(self, mode: bool = True):
            super().train(mode)
            self.child.train(False)
            return self

    on_purpose = torch.nn.Sequential(Held(), torch.nn.Linear(2, 2))
    on_purpose[0].train()
    assert quiet.eval_modules_on_purpose(on_purpose)
    mistake = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    mistake[1].eval()  # a user's bug: Lightning's note must stay
    modes = [m.training for m in mistake.modules()]
    assert not quiet.eval_modules_on_purpose(mistake)
    assert [m.training for m in mistake.modules()] == modes  # modes restored exactly
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        warnings.warn("Checkpoint directory /x/checkpoints exists and is not empty.")
        warnings.warn("The number of training batches (2) is smaller than the logging interval")
    assert [str(w.message)[:27] for w in seen] == ["The number of training batc"]  # other warnings pass


def test_cpu_thread_policy_leaves_a_core_free_unless_the_user_chose():
    from coattn.train import threads

    before = torch.get_num_threads()
    try:
        want = max(1, threads.usable_cores() - 1)
        assert threads.apply_cpu_thread_policy("cpu", environ={}) == want == torch.get_num_threads()
        torch.set_num_threads(before)
        assert threads.apply_cpu_thread_policy("cpu", environ={"OMP_NUM_THREADS": "2"}) is None
        assert threads.apply_cpu_thread_policy("gpu", environ={}) is None
        assert torch.get_num_threads() == before
        assert threads.runs_on_cpu("auto") == (not torch.cuda.is_available())
    finally:
        torch.set_num_threads(before)


def test_the_cli_applies_the_thread_policy_with_the_trainer_accelerator(tiny_clotho, tmp_path, monkeypatch):
    from coattn.train import threads
    from coattn.train.cli import run

    seen = []
    monkeypatch.setattr(threads, "apply_cpu_thread_policy", lambda acc, environ=None: seen.append(acc))
    monkeypatch.chdir(tmp_path)
    # max_epochs=0 is refused right after the policy ran: nothing is built or trained
    assert run(["fit", *tiny_fit_args(tiny_clotho), "--trainer.max_epochs=0"]) == 1
    assert seen == ["cpu"]


@pytest.mark.parametrize("script", ["threads.py"])
def test_threads_benchmark_prints_its_table(script):
    from tests.conftest import REPO

    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--seconds", "0.2", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env=subprocess_env(), check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith(("| idle |", "| busy |"))]
    assert len(rows) == 6 and "load average" in out, out
