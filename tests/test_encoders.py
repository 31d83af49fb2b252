"""Encoders: HTS-AT frame features, CLAP checkpoint loading, HF / tiny text encoders (CPU, < 60 s)."""
from __future__ import annotations

import pickle
import random
import time

import numpy as np

import pytest
import torch

from coattn.encoders import (
    AUDIO_CONFIGS, CheckpointError, ClapAudioEncoder, HFTextEncoder, TinyTextEncoder, load_clap_state_dict,
)
from coattn.encoders.clap_checkpoint import select_prefix

CAPTIONS = [
    "a dog barks loudly in the distance",
    "rain falls on a tin roof",
    "a cat meows softly while rain falls",
    "people talk in a busy cafe",
    "a car engine starts and drives away",
    "birds chirp in the morning near a river",
]


class NotAWeight:
    """A custom object: torch.load(weights_only=True) must refuse to unpickle it."""

    def __init__(self):
        self.x = 1


@pytest.fixture(scope="module")
def mini() -> ClapAudioEncoder:
    torch.manual_seed(0)
    return ClapAudioEncoder("HTSAT-mini")


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(2, 480000, generator=g)


def write_official(path, audio_sd, text_sd=None, extra=None):
    """Write a checkpoint in LAION-CLAP's released layout (DDP ``module.`` prefix, projections, epoch)."""
    sd = {f"module.audio_branch.{k}": v for k, v in audio_sd.items()}
    sd.update({f"module.text_branch.{k}": v
               for k, v in (text_sd or {"embeddings.word_embeddings.weight": torch.zeros(4, 2)}).items()})
    sd["module.audio_projection.0.weight"] = torch.zeros(512, 256)
    sd["module.logit_scale_a"] = torch.tensor(2.0)
    obj = {"epoch": 45, "name": "test", "state_dict": sd}
    obj.update(extra or {})
    torch.save(obj, path)
    return str(path)


# --- audio -------------------------------------------------------------------------------------

def test_presets():
    assert ({k: v.out_dim for k, v in AUDIO_CONFIGS.items()}
            == {"HTSAT-tiny": 768, "HTSAT-base": 1024, "HTSAT-mini": 256})
    with pytest.raises(ValueError, match="HTSAT-tiny"):
        ClapAudioEncoder("HTSAT-huge")


def test_mini_forward_shapes_and_exact_dedup(mini, wave):
    assert (mini.out_dim, mini.num_frames, mini.sample_rate, mini.clip_samples) == (256, 32, 48000, 480000)
    mini.eval()
    with torch.no_grad():
        feats = mini(wave)
        raw = mini.model({"waveform": wave}, mixup_lambda=None, device=wave.device)
    assert feats.states.shape == (2, 32, 256) and feats.pooled.shape == (2, 256)
    assert feats.mask.shape == (2, 32) and feats.mask.dtype == torch.bool and feats.mask.all()
    fine = raw["fine_grained_embedding"]  # (2, 1024, 256): the rows we drop must be exact copies
    assert torch.equal(fine.view(2, 32, 32, 256), feats.states[:, :, None].expand(2, 32, 32, 256))
    assert torch.equal(feats.pooled, raw["embedding"])
    assert feats.states.is_contiguous()
    with pytest.raises(ValueError, match="480000"):
        mini(wave[:, :1000])


def test_mini_trains_and_frozen_has_no_grads(mini, wave):
    mini.train()
    assert mini.model.training
    feats = mini(wave)
    (feats.states.mean() + feats.pooled.mean()).backward()
    assert mini.model.patch_embed.proj.weight.grad is not None
    mini.zero_grad(set_to_none=True)

    frozen = ClapAudioEncoder("HTSAT-mini", freeze=True)
    frozen.train()  # must be ignored
    assert not frozen.training and not any(m.training for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    out = frozen(wave)
    assert not out.states.requires_grad and not out.pooled.requires_grad
    assert torch.equal(out.states, frozen(wave).states)  # eval: deterministic


def test_from_scratch_training_mode_keeps_the_input_norm_and_spectrogram(wave):
    """spec_augment=False, frozen_norm=True, drop_path_rate=0: the rest trains, bn0 keeps its
    statistics, and (nothing random left) a training-mode forward equals the eval-mode one. The
    modes hold from construction: Lightning keeps module modes instead of calling .train()."""
    torch.manual_seed(0)
    enc = ClapAudioEncoder("HTSAT-mini", spec_augment=False, frozen_norm=True, drop_path_rate=0.0)
    for _ in range(2):  # as constructed, then after an explicit .train()
        assert enc.training and enc.model.patch_embed.training
        assert not enc.model.bn0.training and not enc.model.spec_augmenter.training
        enc.train()
    stats = enc.model.bn0.running_mean.clone(), enc.model.bn0.running_var.clone()
    feats = enc(wave)
    (feats.states.mean() + feats.pooled.mean()).backward()
    assert enc.model.patch_embed.proj.weight.grad is not None and enc.model.bn0.weight.grad is not None
    assert torch.equal(enc.model.bn0.running_mean, stats[0]) and torch.equal(enc.model.bn0.running_var, stats[1])
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(wave).states, feats.states.detach(), atol=1e-5)
    enc.train()
    assert not enc.model.bn0.training

    default = ClapAudioEncoder("HTSAT-mini")  # laion-clap's training: SpecAugment, batch norm, drop path
    assert default.model.bn0.training and default.model.spec_augmenter.training
    torch.manual_seed(1)
    a = default(wave).states
    torch.manual_seed(2)
    assert not torch.allclose(a, default(wave).states)  # random stripes / dropped paths


def test_clap_checkpoint_roundtrip(mini, tmp_path):
    path = write_official(tmp_path / "630k-audioset-best.pt", mini.model.state_dict())
    torch.manual_seed(1)
    enc = ClapAudioEncoder("HTSAT-mini", checkpoint=path)
    for k, v in mini.model.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k
    assert path in enc.identity() and "mtime=" in enc.identity()
    assert enc.identity() == ClapAudioEncoder("HTSAT-mini", checkpoint=path).identity()
    # bare state dict, no wrapper / prefix
    torch.save({f"audio_branch.{k}": v for k, v in mini.model.state_dict().items()}, tmp_path / "bare.pt")
    sd = load_clap_state_dict(tmp_path / "bare.pt")
    assert set(select_prefix(sd, "audio_branch.")) == set(mini.model.state_dict())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_clap_checkpoint_protocol4_numpy_scalars(mini, tmp_path):
    # a CLAP file re-saved with pickle protocol 4 + numpy scalars, which weights_only=True rejects
    path = tmp_path / "released.pt"
    sd = {f"module.audio_branch.{k}": v for k, v in mini.model.state_dict().items()}
    torch.save({"epoch": np.int64(45), "best": np.float64(0.5), "arr": np.arange(3), "state_dict": sd}, path,
               pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    enc = ClapAudioEncoder("HTSAT-mini", checkpoint=str(path))
    assert torch.equal(enc.model.patch_embed.proj.weight, mini.model.patch_embed.proj.weight)
    torch.save({"state_dict": sd, "args": NotAWeight()}, tmp_path / "evil4.pt", pickle_protocol=4)
    with pytest.raises(CheckpointError, match="evil4.pt.*NotAWeight"):
        load_clap_state_dict(tmp_path / "evil4.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_numpy_scalars_torch_allowlist_then_fallback(mini, tmp_path, monkeypatch):
    """LAION-CLAP's layout (optimizer state with an np.float64 learning rate, as its cosine schedule
    writes): at protocol 2 (torch.save's default) torch's own safe_globals reads it; at protocol 4
    torch's weights-only unpickler fails whatever is allowlisted, and coattn's allowlist unpickler reads it."""
    from coattn import io

    sd = {f"module.audio_branch.{k}": v for k, v in mini.model.state_dict().items()}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).state_dict()
    opt["param_groups"][0]["lr"] = np.float64(1e-4) * 0.5 * (1 + np.cos(np.pi * 0.3))
    official = {"epoch": 45, "name": "test", "state_dict": sd, "optimizer": opt, "step": np.int64(3)}
    p2, p4 = tmp_path / "p2.pt", tmp_path / "p4.pt"
    torch.save(official, p2)  # default protocol
    torch.save(official, p4, pickle_protocol=4)
    assert (io.pickle_protocol(p2), io.pickle_protocol(p4)) == (2, 4)
    with pytest.raises(pickle.UnpicklingError, match="numpy.core.multiarray.scalar"):
        torch.load(p2, weights_only=True)  # the plain weights-only load rejects numpy scalars
    with torch.serialization.safe_globals(io.numpy_globals()):
        got = torch.load(p2, weights_only=True)
        assert isinstance(got["optimizer"]["param_groups"][0]["lr"], np.float64)
        with pytest.raises(pickle.UnpicklingError, match="Unsupported operand 149"):  # FRAME: protocol 4
            torch.load(p4, weights_only=True)

    def no_fallback():
        raise AssertionError("the allowlist unpickler was used")

    with monkeypatch.context() as m:  # protocol 2 goes through torch's mechanism alone
        m.setattr(io, "_restricted_pickle", no_fallback)
        assert torch.equal(load_clap_state_dict(p2)["audio_branch.patch_embed.proj.weight"],
                           mini.model.patch_embed.proj.weight)
        with pytest.raises(AssertionError, match="allowlist unpickler"):
            load_clap_state_dict(p4)
    assert torch.equal(load_clap_state_dict(p4)["audio_branch.patch_embed.proj.weight"],
                       mini.model.patch_embed.proj.weight)
    # code in a protocol-2 file is refused by torch's unpickler, with the same error as before
    torch.save({"state_dict": sd, "args": NotAWeight()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="evil2.pt.*NotAWeight"):
        load_clap_state_dict(tmp_path / "evil2.pt")


def test_clap_checkpoint_wrong_keys_and_shapes(mini, tmp_path):
    bad = write_official(tmp_path / "other.pt", {"conv_block1.conv1.weight": torch.zeros(64, 1, 3, 3)})  # PANN-like
    with pytest.raises(CheckpointError, match="other.pt.*no key|no key.*other.pt"):
        ClapAudioEncoder("HTSAT-mini", checkpoint=bad)
    sd = dict(mini.model.state_dict())
    sd["patch_embed.proj.weight"] = torch.zeros(48, 1, 4, 4)  # e.g. a tiny/base file into another config
    shapes = write_official(tmp_path / "shapes.pt", sd)
    with pytest.raises(CheckpointError, match="shapes.pt.*patch_embed.proj.weight"):
        ClapAudioEncoder("HTSAT-mini", checkpoint=shapes)


def test_clap_checkpoint_missing_unsafe_fusion(mini, tmp_path):
    missing = tmp_path / "nope" / "630k.pt"
    with pytest.raises(FileNotFoundError, match="nope.*630k-audioset-best.pt.*huggingface.co/lukewys/laion_clap"):
        ClapAudioEncoder("HTSAT-mini", checkpoint=str(missing))
    unsafe = write_official(tmp_path / "unsafe.pt", mini.model.state_dict(), extra={"args": NotAWeight()})
    with pytest.raises(CheckpointError, match="unsafe.pt.*not a plain weights file.*NotAWeight.*refuses to unpickle"):
        ClapAudioEncoder("HTSAT-mini", checkpoint=unsafe)
    sd = dict(mini.model.state_dict(), **{"patch_embed.mel_conv2d.weight": torch.zeros(96, 1, 5, 5)})
    fusion = write_official(tmp_path / "plain-name.pt", sd)
    with pytest.raises(CheckpointError, match="fusion is not supported"):
        ClapAudioEncoder("HTSAT-mini", checkpoint=fusion)
    named = write_official(tmp_path / "630k-fusion-best.pt", mini.model.state_dict())
    with pytest.raises(CheckpointError, match="630k-fusion-best.pt.*fusion"):
        ClapAudioEncoder("HTSAT-mini", checkpoint=named)


# --- text --------------------------------------------------------------------------------------

def test_tiny_text_tokenizer_lifecycle():
    enc = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400,
                          max_length=12)
    assert enc.needs_tokenizer_fit and enc.tokenizer_state() is None
    with pytest.raises(RuntimeError, match="fit_tokenizer"):
        enc(["a dog"])
    enc.fit_tokenizer(CAPTIONS)
    assert not enc.needs_tokenizer_fit
    assert enc.tokenizer.pad_token_id == 1 and len(enc.tokenizer) <= 400

    caps = ["a dog barks", "rain falls on a tin roof while people talk in a busy cafe and birds chirp",
            "zebra ünïcode 🐕"]
    tok = enc.tokenize(caps)
    ids, attn = tok["input_ids"], tok["attention_mask"]
    assert ids.shape[1] == 12  # longest caption truncated at max_length
    assert torch.equal(attn.bool(), ids != 1)  # mask == not padding
    assert (ids[:, 0] == 0).all()  # <s>
    assert ids[0, attn[0].sum() - 1] == 2 and ids[1, -1] == 2  # </s> closes real and truncated captions
    feats = enc(caps)
    assert feats.states.shape == (3, 12, 32) and feats.pooled.shape == (3, 32)
    assert torch.equal(feats.mask, attn.bool())

    state = enc.tokenizer_state()
    again = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400,
                            max_length=12)
    again.load_tokenizer_state(state)
    assert torch.equal(again.tokenize(caps)["input_ids"], ids)
    assert again.tokenizer_state() == state  # stable JSON even after calls with truncation/padding
    fitted = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400,
                             max_length=12)
    fitted.fit_tokenizer(list(CAPTIONS))
    assert fitted.tokenizer_state() == state  # deterministic fit


def test_tiny_text_frozen():
    enc = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400, freeze=True)
    enc.fit_tokenizer(CAPTIONS)
    enc.train()
    assert not enc.training and not enc.model.training
    out = enc(CAPTIONS[:2])
    assert not out.states.requires_grad and not any(p.requires_grad for p in enc.parameters())


def _word_corpus(n: int = 600) -> list[str]:
    # random letter words give BPE enough distinct pairs to learn > 1000 tokens (a real tokenizer's size)
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(8)) for _ in range(n)] + CAPTIONS


@pytest.fixture(scope="module")
def local_roberta(tmp_path_factory):
    """A tiny RobertaModel + trained BPE tokenizer saved like a hub download (``save_pretrained``)."""
    folder = tmp_path_factory.mktemp("tiny-roberta")
    torch.manual_seed(0)
    src = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=1500,
                          max_length=16)
    src.fit_tokenizer(_word_corpus())
    assert len(src.tokenizer) >= 1000
    src.tokenizer.save_pretrained(folder)
    src.model.save_pretrained(folder)
    return folder, src


def test_hf_text_from_local_folder(local_roberta):
    folder, src = local_roberta
    enc = HFTextEncoder(model=str(folder), max_length=16)
    assert enc.out_dim == 32 and enc.model.pooler is not None
    enc.eval(), src.eval()
    caps = ["a dog", "rain falls", "a cat meows softly while rain falls"]
    with torch.no_grad():
        feats, ref = enc(caps), src(caps)
    L = feats.mask.shape[1]
    assert feats.states.shape == (3, L, 32) and feats.pooled.shape == (3, 32)
    assert torch.equal(feats.mask, enc.tokenize(caps)["attention_mask"].bool()) and not feats.mask.all()
    assert torch.allclose(feats.states, ref.states, atol=1e-5) and torch.allclose(feats.pooled, ref.pooled, atol=1e-5)
    assert str(folder) in enc.identity()
    assert not enc.needs_tokenizer_fit and enc.tokenizer_state() is None


def test_hf_text_loads_clap_text_branch(local_roberta, mini, tmp_path):
    folder, src = local_roberta
    from transformers import RobertaModel

    torch.manual_seed(5)
    clap_text = RobertaModel(src.model.config)  # stands in for CLAP's fine-tuned RoBERTa
    # old-transformers buffer
    text_sd = dict(clap_text.state_dict(), **{"embeddings.position_ids": torch.arange(18)[None]})
    path = write_official(tmp_path / "630k-audioset-best.pt", mini.model.state_dict(), text_sd)
    enc = HFTextEncoder(model=str(folder), max_length=16, clap_checkpoint=path)
    for k, v in clap_text.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k
    wide = RobertaModel(type(src.model.config)(**{**src.model.config.to_dict(), "hidden_size": 64,
                                                  "intermediate_size": 128}))
    bad = write_official(tmp_path / "wide.pt", mini.model.state_dict(), wide.state_dict())
    with pytest.raises(CheckpointError, match="wide.pt.*shape"):
        HFTextEncoder(model=str(folder), max_length=16, clap_checkpoint=bad)


def test_hf_text_missing_model_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="coattn-test/no-such-model.*huggingface-cli download roberta-base"):
        HFTextEncoder(model="coattn-test/no-such-model")
    # no hub retries: those take minutes (about 4 per model); 60 s leaves room for the imports on a loaded
    # 2-core machine, where 15 s was a verdict on the machine's load, not on the code
    assert time.perf_counter() - t0 < 60


def test_fft_spectrogram_matches_torchlibrosa():
    """The torch.stft replacement gives torchlibrosa's conv-based spectrogram (what CLAP trained on)."""
    from coattn.encoders import ClapAudioEncoder

    enc = ClapAudioEncoder("HTSAT-mini")
    extractor = enc.model.spectrogram_extractor
    x = torch.randn(2, 48000)
    fast = extractor(x)
    reference = type(extractor).forward(extractor, x)  # the class's own (conv) forward
    assert fast.shape == reference.shape == (2, 1, 101, 513)
    assert ((fast - reference).abs().max() / reference.abs().max()).item() < 1e-5
