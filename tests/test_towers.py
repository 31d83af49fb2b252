"""Audio towers: the shared interface, and the aisfx sound-effects tower against the aisfx package itself
(network, front end, a real recording end to end, masks, safe weight loading). CPU, one thread, ~30 s."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from coattn.encoders import AisfxAudioEncoder, AudioTower, ClapAudioEncoder, CheckpointError
from coattn.encoders.aisfx import load_aisfx_state_dict, mel_filters, package_checkpoint

pytest.importorskip("aisfx", reason="aisfx is installed by .ci/install.sh (pip install --no-deps aisfx==0.1.2)")

HERE = Path(__file__).resolve()
CLOTHO_SAMPLES = [Path(os.environ["COATTN_SHARED_DATA"]) / "clotho" / "audio_sample"] if "COATTN_SHARED_DATA" in \
    os.environ else [HERE.parents[2] / "shared" / "data" / "clotho" / "audio_sample",
                     HERE.parents[3] / "shared" / "data" / "clotho" / "audio_sample"]  # a worktree under /work/wt
LIBROSA_ARGS = dict(sr=44100, n_mels=96, norm=1.0, fmin=0.0, fmax=22050.0, htk=True, power=2.0, hop_length=1024,
                    win_length=2048, n_fft=2048, center=True, pad_mode="constant")  # pad_mode: librosa 0.9.2's default


@pytest.fixture(scope="module")
def tower() -> AisfxAudioEncoder:
    return AisfxAudioEncoder(clip_seconds=4.0)


@pytest.fixture(scope="module")
def package_model():
    """The package's own CrossNet, loaded as aisfx.inference.main does (but with weights_only=True)."""
    from aisfx.inference import load_bestModel

    with torch.serialization.safe_globals([np.core.multiarray.scalar, np.dtype, np.dtypes.Int64DType]):
        weights, ds_dict = torch.load(package_checkpoint(), map_location="cpu", weights_only=True)
    return load_bestModel(weights, ds_dict, "cpu")


def waves(n: int, samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 44100.0
    tone = torch.sin(2 * torch.pi * 440.0 * t) * (t % 1.0 < 0.3)  # bursts, so frames differ
    return torch.stack([0.2 * torch.randn(samples, generator=g) * (1 + i) + tone for i in range(n)])


def test_towers_share_the_interface(tower):
    clap = ClapAudioEncoder("HTSAT-mini")
    for enc in (tower, clap):
        assert isinstance(enc, AudioTower)
        assert enc.frame_rate > 0 and enc.identity() and enc.out_dim > 0
    assert (tower.sample_rate, tower.clip_samples, tower.num_frames, tower.out_dim) == (44100, 176400, 21, 512)
    assert tower.frame_rate == pytest.approx(44100 / 8192)  # ~5.38 frames/s
    assert AisfxAudioEncoder().num_frames == 53  # 10 s: 431 STFT frames -> 215 -> 107 -> 53
    assert clap.frame_rate == pytest.approx(3.2)
    with pytest.raises(ValueError, match="176400"):
        tower(torch.zeros(1, 1000))


def test_mel_filters_are_librosas():
    import librosa

    ref = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0.0, fmax=22050.0, htk=True, norm=1.0)
    np.testing.assert_allclose(mel_filters(), ref, rtol=0, atol=1e-7)


def test_front_end_matches_librosa_melspectrogram(tower):
    import librosa

    x = waves(2, tower.clip_samples)
    ours = tower.spectrogram(x).numpy()  # (B, T, 96)
    for i in range(2):
        y = x[i].numpy() / np.abs(x[i].numpy()).max()  # the package's peak normalisation
        ref = np.log10(librosa.feature.melspectrogram(y=y, **LIBROSA_ARGS) * 10000.0 + 1) / 9.457798957824707
        assert ours[i].T.shape == ref.shape == (96, 1 + tower.clip_samples // 1024)
        np.testing.assert_allclose(ours[i].T, ref, rtol=0, atol=2e-6)
    # the peak normalisation makes the loudness irrelevant
    torch.testing.assert_close(tower.spectrogram(3 * x), tower.spectrogram(x), rtol=0, atol=2e-6)


def test_network_equals_the_package_forward(tower, package_model):
    x = waves(3, tower.clip_samples)
    spec = tower.spectrogram(x)
    with torch.no_grad():
        theirs = package_model.get_embedding(spec)  # (B, 512): conv blocks, mean over freq, max over time
    feats = tower(x)
    assert feats.states.shape == (3, 21, 512) and feats.mask.all()
    torch.testing.assert_close(feats.pooled, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.states.amax(1), theirs, rtol=1e-5, atol=1e-5)
    assert (feats.states.std(1) > 0).float().mean() > 0.5  # frames differ: not one vector repeated


def shortest_clotho_file() -> Path:
    files = sorted(f for d in CLOTHO_SAMPLES if d.is_dir() for f in d.glob("*.wav"))
    if not files:
        pytest.skip(f"no Clotho sample clips in {[str(d) for d in CLOTHO_SAMPLES]} (set COATTN_SHARED_DATA)")
    import soundfile as sf

    return min(files, key=lambda f: sf.info(str(f)).frames)


def test_end_to_end_on_a_real_recording(package_model):
    """The package's own librosa front end on a Clotho recording vs this tower on the same file."""
    import soundfile as sf
    from aisfx.preprocessing import spectrogram_normalize
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    path = shortest_clotho_file()
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == 44100
    audio = audio.mean(1)
    theirs = spectrogram_normalize(compute_spectrogram(str(path), 44100.0, 2048, 1024, 96, 0.0, 22050.0)).T
    tower = AisfxAudioEncoder(clip_seconds=len(audio) / 44100)
    assert tower.clip_samples == len(audio)
    ours = tower.spectrogram(torch.from_numpy(audio)[None])[0].numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours[2:-2], theirs[2:-2], rtol=0, atol=1e-5)  # interior frames
    with torch.no_grad():
        embedding = package_model.get_embedding(torch.Tensor(theirs[None]))
    torch.testing.assert_close(tower(torch.from_numpy(audio)[None]).pooled, embedding, rtol=1e-4, atol=1e-4)


def test_frames_beyond_lengths_are_masked_and_leave_pooled_alone(tower):
    x = waves(2, tower.clip_samples, seed=1)
    lengths = torch.tensor([tower.clip_samples, 8192 * 10])
    x[1, 8192 * 10:] = 5.0 * torch.randn(tower.clip_samples - 8192 * 10)  # loud padding beyond the clip
    feats = tower(x, lengths)
    assert feats.mask[0].all() and feats.mask[1].sum() == 10 and not feats.mask[1, 10:].any()
    torch.testing.assert_close(feats.pooled[1], feats.states[1, :10].amax(0))
    assert not torch.allclose(feats.pooled[1], feats.states[1].amax(0))  # the padding would have won
    torch.testing.assert_close(feats.pooled[0], tower(x[:1]).pooled[0])  # batch-independent
    # the peak comes from the clip's own samples: the same clip with zeros after it has the same real frames' input
    quiet = x[1:].clone()
    quiet[0, 8192 * 10:] = 0
    spec_loud, spec_quiet = tower.spectrogram(x[1:], lengths[1:]), tower.spectrogram(quiet, lengths[1:])
    torch.testing.assert_close(spec_loud[:, :70], spec_quiet[:, :70])  # STFT frames well inside the clip


def test_freeze_and_training_modes(tower):
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.training  # frozen stays in eval
    out = tower(waves(1, tower.clip_samples))
    assert not out.states.requires_grad
    trainable = AisfxAudioEncoder(clip_seconds=1.0, freeze=False)
    assert trainable.training
    out = trainable(waves(2, trainable.clip_samples))
    (out.states.mean() + out.pooled.mean()).backward()
    assert trainable.net.conv_block1.conv1.weight.grad is not None


def test_weights_load_safely_and_identity_follows_the_file(tmp_path, tower):
    state = load_aisfx_state_dict(package_checkpoint())
    assert all(not k.startswith(("fc", "embedding_net")) for k in state) and len(state) == 4 * 12
    for k, v in tower.net.state_dict().items():
        assert torch.equal(v, state[k]), k
    copy = tmp_path / "checkpoint.pth"
    shutil.copy(package_checkpoint(), copy)
    other = AisfxAudioEncoder(clip_seconds=4.0, checkpoint=str(copy))
    assert str(copy) in other.identity() and "aisfx=0.1.2" in other.identity()
    assert other.identity() != tower.identity() and tower.identity() == AisfxAudioEncoder(clip_seconds=4.0).identity()
    assert AisfxAudioEncoder(clip_seconds=5.0).identity() != tower.identity()  # the window is part of the key
    evil = tmp_path / "evil.pth"
    torch.save((state, {"x": shutil.copy}), evil)  # a function: weights_only must refuse it
    with pytest.raises(CheckpointError, match="weights_only"):
        AisfxAudioEncoder(checkpoint=str(evil))
    with pytest.raises(CheckpointError, match="not found"):
        AisfxAudioEncoder(checkpoint=str(tmp_path / "missing.pth"))
    random = AisfxAudioEncoder(clip_seconds=1.0, pretrained=False)
    assert "random-init" in random.identity()
    assert not torch.equal(random.net.conv_block1.conv1.weight, state["conv_block1.conv1.weight"])


def test_an_exported_model_rebuilds_the_tower_without_its_checkpoint():
    from coattn.hub import component_config, record_spec

    enc = record_spec(AisfxAudioEncoder(clip_seconds=2.0), {"class_path": "coattn.encoders.AisfxAudioEncoder",
                                                            "init_args": {"clip_seconds": 2.0, "freeze": True}})
    spec = component_config(enc, "audio_encoder")
    assert spec["init_args"] == {"clip_seconds": 2.0, "checkpoint": None, "pretrained": False}
    rebuilt = AisfxAudioEncoder(**spec["init_args"])
    rebuilt.load_state_dict(enc.state_dict())  # what hub.load_weights does with the safetensors
    x = waves(1, enc.clip_samples)
    torch.testing.assert_close(rebuilt(x).pooled, enc(x).pooled)
