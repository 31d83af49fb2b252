"""Exported model folders (issue 14, part 1): `coattn export`, `CoAttnModel.from_pretrained` /
`save_pretrained` on huggingface_hub's mixin, `coattn search --model` and `coattn test --model`.
The model is the tiny one trained for two steps through the CLI (tests/conftest.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from coattn import CoAttnModel, Retriever, load_clip
from coattn.cli import main
from coattn.errors import CheckpointError, ConfigError
from coattn.model import build_component
from coattn.tools import search as S
from tests.test_cli import tiny_args

CAPTIONS = ["a beep then a dog barks", "rain falls on a roof", "a siren wails twice", "birds sing", "an engine idles"]


def scores_of(model, clips_dir) -> dict[str, torch.Tensor]:
    paths = sorted(clips_dir.glob("*.wav"))
    enc = model.audio_encoder
    with torch.no_grad():
        audio = model.encode_audio(torch.stack([load_clip(p, enc.sample_rate, enc.clip_samples) for p in paths]))
        text = model.encode_text(CAPTIONS)
        exact = Retriever(mode="exact")(model, audio, text)
        rerank = Retriever(mode="rerank", rerank_k=2)(model, audio, text)
    return {"exact": exact.scores, "dual": exact.dual, "rerank": rerank.scores}


def strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


@pytest.mark.slow
def test_exported_folder_is_self_contained_and_bit_identical(exported_demo, tiny_clotho, tmp_path):
    run, ckpt, folder = exported_demo
    moved = shutil.copytree(folder, tmp_path / "elsewhere")  # nothing of the run folder is needed
    assert sorted(p.name for p in moved.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                       "tokenizer.json"]
    config = json.loads((moved / "config.json").read_text())
    assert config["format"] == "coattn-model/1" and config["text_tokenizer"] == "tokenizer.json"
    assert config["audio_encoder"]["init_args"]["checkpoint"] is None and config["clap_checkpoint"] is None
    assert not any("freeze" in c.get("init_args", {}) for c in (config["audio_encoder"], config["text_encoder"]))
    assert not any(k in config for k in ("optim", "loss", "evaluation", "feature_cache", "data", "trainer"))
    assert not [s for s in strings(config) if s.startswith(("/", "~", "."))]  # no path at all
    assert str(run) not in (moved / "config.json").read_text()

    ref, got = CoAttnModel.from_checkpoint(ckpt), CoAttnModel.from_pretrained(moved)
    assert not got.training and type(got.text_encoder).__name__ == "TinyTextEncoder"
    a, b = ref.state_dict(), got.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s_ref, s_got = scores_of(ref, tiny_clotho / "evaluation"), scores_of(got, tiny_clotho / "evaluation")
    for mode in s_ref:  # bit-identical, not merely close
        assert torch.equal(s_ref[mode], s_got[mode]), mode

    # save_pretrained of the loaded model writes the same architecture and weights again
    got.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again/config.json").read_text())
    assert again == config
    from safetensors.torch import load_file

    first, second = load_file(moved / "model.safetensors"), load_file(tmp_path / "again/model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_model_card_has_the_real_metrics_data_command_and_licence(exported_demo):
    run, ckpt, folder = exported_demo
    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: coattn" in front and "license: mit" in front and "pytorch_model_hub_mixin" in front
    report = json.loads((run / "exported_test/metrics.json").read_text())
    for name in ("t2a_mAP@10", "t2a_R@1", "a2t_mAP@10"):
        value, (lo, hi) = report["metrics"][name], report["ci"][name]
        assert f"| {name} | {100 * value:.2f} | [{100 * lo:.2f}, {100 * hi:.2f}] |" in card
    assert "on 20 captions x 4 clips" in card
    assert "coattn fit --config" in card and "data_modules.ClothoDataModule" in card  # how it was trained
    assert "2 optimiser steps" in card and "CoAttentionCascade(kind='iterating'" in card
    assert "`mit`" in card and "CoAttnModel.from_pretrained" in card and "coattn export --ckpt_path" in card


@pytest.mark.slow
def test_metrics_of_another_checkpoint_stay_out_of_the_card(exported_demo, tmp_path):
    run, ckpt, _ = exported_demo
    last = ckpt.parent / "last.ckpt"  # metrics.json of the run was made on best.ckpt
    assert main(["export", "--ckpt_path", str(last), str(tmp_path / "last")]) == 0
    card = (tmp_path / "last/README.md").read_text()
    assert "No test metrics were found for this checkpoint" in card and "| t2a_mAP@10 |" not in card
    assert "license:" not in card.split("---")[1] and "Not set. Mind the licences" in card
    # --metrics puts a given file in anyway; a non-empty folder needs --overwrite
    assert main(["export", "--ckpt_path", str(last), str(tmp_path / "last"),
                 "--metrics", str(run / "exported_test/metrics.json")]) == 2
    assert main(["export", "--ckpt_path", str(last), str(tmp_path / "last"), "--overwrite",
                 "--metrics", str(run / "exported_test/metrics.json")]) == 0
    assert "| t2a_mAP@10 |" in (tmp_path / "last/README.md").read_text()


@pytest.mark.slow
def test_search_and_test_take_the_folder(exported_demo, tiny_clotho, tmp_path, monkeypatch, capsys):
    run, ckpt, folder = exported_demo
    clips = tiny_clotho / "evaluation"

    def search(*source: str) -> list:
        capsys.readouterr()
        assert S.main(["a beep then a dog bark", "rain", *source, "--audio-dir", str(clips),
                       "--index-dir", str(tmp_path / "index"), "--json", "--mode", "exact"]) == 0
        return json.loads(capsys.readouterr().out)["queries"]

    assert search("--model", str(folder)) == search("--ckpt_path", str(ckpt))  # same ranks, same scores
    capsys.readouterr()
    assert S.main(["x", "--model", str(tmp_path / "no-such-folder"), "--audio-dir", str(clips)]) == 2
    assert "no such folder, and fetching it from the Hugging Face Hub failed" in capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    assert main(["test", *tiny_args(tiny_clotho), "--model", str(folder),
                 f"--model.evaluation.results_dir={out}"]) == 0
    by_ckpt, by_folder = np.load(run / "exported_test/scores.npz"), np.load(out / "scores.npz")
    assert np.array_equal(by_ckpt["scores"], by_folder["scores"])  # the test split, bit for bit
    extra = json.loads((out / "metrics.json").read_text())["extra"]
    assert extra["model_dir"] == str(folder) and extra["ckpt_path"] is None
    capsys.readouterr()
    assert main(["test", *tiny_args(tiny_clotho), "--model", str(folder), f"--ckpt_path={ckpt}"]) == 1
    assert main(["fit", *tiny_args(tiny_clotho), f"--model={folder}"]) == 1
    err = capsys.readouterr().err
    assert "either --ckpt_path" in err and "serves `coattn validate / test / predict`" in err


def _write_clap(path, audio, text, embed_dim: int) -> None:
    """A LAION-CLAP-layout file (protocol 2, numpy scalar) with both branches and both projections."""
    sd = {f"module.audio_branch.{k}": v for k, v in audio.model.state_dict().items()}
    sd.update({f"module.text_branch.{k}": v + 0.01 for k, v in text.model.state_dict().items()})  # != the folder's
    for name, width in (("audio", audio.out_dim), ("text", text.out_dim)):
        sd.update({f"module.{name}_projection.0.weight": torch.randn(embed_dim, width),
                   f"module.{name}_projection.0.bias": torch.randn(embed_dim),
                   f"module.{name}_projection.2.weight": torch.randn(embed_dim, embed_dim),
                   f"module.{name}_projection.2.bias": torch.randn(embed_dim)})
    torch.save({"epoch": np.int64(45), "state_dict": sd}, path)


def test_hf_text_encoder_and_clap_files_are_not_needed(tmp_path):
    """A CLAP-initialised model with a Hugging Face text tower: the folder keeps the tokenizer and the
    transformers config, model.safetensors every weight; the CLAP file and the RoBERTa folder can go."""
    from coattn.encoders import ClapAudioEncoder, TinyTextEncoder
    from tests.test_encoders import _word_corpus

    torch.manual_seed(0)
    roberta = tmp_path / "roberta"
    src = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=1500,
                          max_length=16)
    src.fit_tokenizer(_word_corpus())
    src.tokenizer.save_pretrained(roberta)
    src.model.save_pretrained(roberta)
    clap = tmp_path / "630k-audioset-best.pt"
    _write_clap(clap, ClapAudioEncoder("HTSAT-mini"), src, embed_dim=16)

    def part(cls: str, **args) -> torch.nn.Module:
        return build_component({"class_path": cls, "init_args": args}, torch.nn.Module)

    model = CoAttnModel(
        part("coattn.encoders.ClapAudioEncoder", config="HTSAT-mini", checkpoint=str(clap), freeze=True),
        part("coattn.encoders.HFTextEncoder", model=str(roberta), max_length=16, clap_checkpoint=str(clap)),
        part("coattn.coattention.CoAttentionCascade", kind="single", width=32, heads=2, ffn_dim=64),
        embed_dim=16, dual_projection="clap", clap_checkpoint=str(clap)).eval()
    out = tmp_path / "exported"
    model.save_pretrained(out)
    shutil.rmtree(roberta)
    clap.unlink()
    config = json.loads((out / "config.json").read_text())
    text = config["text_encoder"]["init_args"]
    # pooling: resolved when built ("auto" reads the source folder, which the export does not keep)
    assert text == {"model": "text_encoder", "pretrained": False, "max_length": 16, "clap_checkpoint": None,
                    "pooling": "pooler"}
    assert config["audio_encoder"]["init_args"]["checkpoint"] is None and config["text_tokenizer"] is None
    files = sorted(p.name for p in (out / "text_encoder").iterdir())
    assert "config.json" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".safetensors", ".bin"))]  # weights live in one file only

    got = CoAttnModel.from_pretrained(out)
    assert "weights=" in got.text_encoder.identity()  # no longer keyed on a file that is gone
    wave = 0.1 * torch.randn(2, 480000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = (Retriever(mode="exact")(m, m.encode_audio(wave), m.encode_text(CAPTIONS[:3])).scores
                         for m in (model, got))
    assert torch.equal(before, after)
    assert "(kind='single'" in (out / "README.md").read_text()  # the card describes it without a run folder


def test_folders_that_cannot_load_say_why(tmp_path):
    from coattn.coattention import CoAttentionCascade
    from coattn.encoders import ClapAudioEncoder, TinyTextEncoder

    plain = CoAttnModel(ClapAudioEncoder("HTSAT-mini"), TinyTextEncoder(vocab_size=300),
                        CoAttentionCascade("none"), embed_dim=8)
    with pytest.raises(ConfigError, match="model.audio_encoder .ClapAudioEncoder. was built in Python"):
        plain.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain/model.safetensors").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        CoAttnModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ConfigError, match="not a coattn model folder"):
        CoAttnModel.from_pretrained(tmp_path / "other")

    model = CoAttnModel(*(build_component({"class_path": f"coattn.{cls}", "init_args": args}, torch.nn.Module)
                          for cls, args in (("encoders.ClapAudioEncoder", {"config": "HTSAT-mini"}),
                                            ("encoders.TinyTextEncoder", {"vocab_size": 300}),
                                            ("coattention.CoAttentionCascade", {"kind": "none"}))), embed_dim=8)
    model.text_encoder.fit_tokenizer(CAPTIONS)
    model.save_pretrained(tmp_path / "ok")
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "ok/model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if k != "dual_audio.proj.bias"}, weights)
    with pytest.raises(CheckpointError, match="weights do not fit .*missing \\['dual_audio.proj.bias'\\]"):
        CoAttnModel.from_pretrained(tmp_path / "ok")
    weights.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
        CoAttnModel.from_pretrained(tmp_path / "ok")
