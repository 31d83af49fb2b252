"""coattn prepare: a 48 kHz copy with the same layout that the data modules read identically."""
from __future__ import annotations

import os

import soundfile as sf
import torch

from coattn.tools.prepare import main
from coattn.tools.synth import main as synth
from data_modules import ClothoDataModule


def test_prepare_mirrors_layout_and_resamples_once(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    synth([str(src), "--n-train", "2", "--n-val", "1", "--n-eval", "2", "--seconds", "12"])
    (src / "evaluation" / "broken.wav").write_bytes(b"junk")
    os.symlink(tmp_path / "elsewhere.wav", src / "evaluation" / "escape.wav")
    assert main([str(src), str(dst), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "5 converted" in out and "1 unreadable" in out
    info = sf.info(str(dst / "evaluation" / "evaluation_00000.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (48000, 1, "PCM_16") and info.frames == 12 * 48000
    assert ((dst / "clotho_captions_evaluation.csv").read_bytes()
            == (src / "clotho_captions_evaluation.csv").read_bytes())
    assert ((dst / "evaluation" / "broken.wav").read_bytes() == b"junk"
            and not (dst / "evaluation" / "escape.wav").exists())
    # same batches from both copies, up to 16-bit quantisation
    a = next(iter(ClothoDataModule(str(src), eval_batch_size=2, eval_crop="centre").test_dataloader()))["audio"]
    b = next(iter(ClothoDataModule(str(dst), eval_batch_size=2, eval_crop="centre").test_dataloader()))["audio"]
    assert torch.allclose(a, b, atol=1e-3)
    assert main([str(src), str(dst), "--workers", "1"]) == 0  # resumable: nothing to redo
    last = capsys.readouterr().out.splitlines()[-1]
    assert "10 skipped" in last and "converted" not in last
