"""Stopped runs lose nothing (issue 22, findings 3 and 4): Ctrl-C in `coattn augment` keeps every answer
and sends nothing more; a SIGTERM during validation leaves that epoch to be validated by the resumed run."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
import torch

from coattn.tools.augment import main as augment
from tests.reliability_helpers import coattn_cmd, read_metrics, run_until_marker, subprocess_env, tiny_fit_args
from tests.test_augment import FakeLLM


# ---- 4. Ctrl-C in `coattn augment` ------------------------------------------------------------------------
class SlowLLM(FakeLLM):
    """FakeLLM answering after 0.4 s: a paid request takes a while."""

    def do_POST(self):  # noqa: N802
        time.sleep(0.4)
        super().do_POST()


@pytest.fixture()
def slow_server():
    FakeLLM.faults, FakeLLM.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowLLM)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def test_ctrl_c_in_augment_keeps_every_answer_and_sends_nothing_more(slow_server, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"a dog barks {k} times\n" for k in range(24)), encoding="utf-8")
    cache, out = tmp_path / "cache.jsonl", tmp_path / "aug.json"
    args = [str(captions), "--out", str(out), "--cache", str(cache), "--base-url", slow_server, "--model", "m",
            "--n", "3", "--batch-size", "1", "--concurrency", "3", "--encoder", "ngram", "--no-progress"]
    proc = subprocess.Popen([*coattn_cmd(), "augment", *args], cwd=tmp_path, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_lines(cache)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - t0 < 30, err  # (the interpreter's exit alone: 2-8 s)
    assert "Traceback" not in err and len([x for x in err.splitlines() if "interrupted:" in x]) == 1, err
    kept = len(_lines(cache))
    time.sleep(1.0)  # nothing still being sent after the exit
    assert len(FakeLLM.seen) == kept < 24  # every request sent was answered and its answer kept
    assert len({json.loads(x)["caption"] for x in _lines(cache)}) == kept
    assert augment(args) == 0  # the rerun asks only for the rest
    assert len(FakeLLM.seen) == 24 and len(_lines(cache)) == 24


# ---- 3. SIGTERM during validation -------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_during_validation_is_validated_on_resume(tiny_clotho, tmp_path):
    """SIGTERM while epoch 0 is being validated: exit 143, and `--ckpt_path last` validates epoch 0 (its metrics
    logged, best.ckpt written from it) before the run goes on."""
    marker = tmp_path / "parked"
    wait = json.dumps({"class_path": "tests.test_reliability_stops.WaitForSigtermInValidation",
                       "init_args": {"marker": str(marker)}})
    args = ["fit", *tiny_fit_args(tiny_clotho, epochs=1), "--data.init_args.eval_batch_size=1"]  # 4 val batches
    proc = run_until_marker([*args, f"--trainer.callbacks+={wait}"], tmp_path, marker)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, (tmp_path / "killed_run.log").read_text()[-3000:]
    ckpts = tmp_path / "runs/demo_scratch/checkpoints"
    assert not (ckpts / "best.ckpt").exists()  # epoch 0 was never validated
    resumed = subprocess.run([*coattn_cmd(), *args, "--ckpt_path", "last"], cwd=tmp_path, env=subprocess_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = read_metrics(tmp_path / "runs/demo_scratch/logs/version_1/metrics.csv")
    assert 0 in metrics and "val/t2a_mAP@10" in metrics[0], metrics
    assert (ckpts / "best.ckpt").is_file()
    best = torch.load(ckpts / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 0 and best["global_step"] == 2
    assert resumed.stderr.count("coattn: validating epoch 0 first: a SIGTERM stopped its validation") == 1


from lightning.pytorch import Callback  # noqa: E402 (the helper below is loaded by class path in the subprocess)


class WaitForSigtermInValidation(Callback):
    """After the first validation batch of epoch 0 (not the sanity check): write ``marker``, wait for SIGTERM."""

    def __init__(self, marker: str, max_wait_s: float = 300.0):
        self.marker, self.max_wait_s = marker, max_wait_s

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or trainer.current_epoch != 0 or batch_idx != 0:
            return
        with open(self.marker, "w") as f:
            f.write("validating\n")
        deadline = time.time() + self.max_wait_s
        while not trainer.received_sigterm and time.time() < deadline:
            time.sleep(0.05)
