"""Feature cache: hits, misses, invalidation on every key part, exactness, training with it."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from coattn.encoders import ClapAudioEncoder, TinyTextEncoder
from coattn.store import FeatureStore
from coattn.train.feature_cache import FeatureCache
from coattn.features import SequenceFeatures
from data_modules import ClothoDataModule
from data_modules.datasets import ClipDataset, collate


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory) -> Path:
    """2 training, 1 validation and 2 evaluation clips of 2 s (the tests edit files: own copy)."""
    from coattn.cli import main

    root = tmp_path_factory.mktemp("fc_data")
    assert main(["synth", str(root), "--seed", "3", "--n-train", "2", "--n-val", "1", "--n-eval", "2",
                 "--seconds", "2"]) == 0
    return root


@pytest.fixture(scope="module")
def encoders(two_clips):
    torch.manual_seed(0)
    audio = ClapAudioEncoder("HTSAT-mini", freeze=True)
    text = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                           max_length=24, freeze=True)
    text.fit_tokenizer(ClothoDataModule(root=str(two_clips)).train_captions())
    return audio, text


def make_cache(root, audio, text, dm, crop="start") -> FeatureCache:
    return FeatureCache(root, audio, text, dm.sample_rate, dm.num_samples, crop, batch_size=2, progress=False)


def test_store_round_trip_trims_to_longest_real_length(tmp_path):
    store = FeatureStore(tmp_path / "s")
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    feats = SequenceFeatures(torch.randn(2, 5, 3), mask, torch.randn(2, 3))
    store.write(["a", "b"], feats, torch.tensor([True, False]))
    got, valid = FeatureStore(tmp_path / "s").get(["b", "a"])  # a fresh reader sees the shard
    assert got.states.shape == (2, 3, 3) and valid.tolist() == [False, True]
    assert torch.equal(got.states[1], feats.states[0, :3]) and torch.equal(got.mask[1], mask[0, :3])
    assert torch.equal(got.pooled[0], feats.pooled[1])
    got_b, _ = store.get(["b"])
    assert got_b.states.shape == (1, 1, 3)  # alone, "b" is one token long: as its encoder returns it
    with pytest.raises(KeyError, match="no entry"):
        store.get(["zzz"])


def test_hit_miss_and_cached_equals_fresh(tmp_path, two_clips, encoders):
    audio, text = encoders
    dm = ClothoDataModule(root=str(two_clips))
    split = dm.split("test")
    cache = make_cache(tmp_path, audio, text, dm)
    keys = cache.ensure_audio(split)
    captions = [c for caps in split.captions for c in caps]
    cache.ensure_text(captions)
    assert cache.stats == {"audio_built": 2, "text_built": len(set(captions))}
    again = make_cache(tmp_path, audio, text, dm)  # another run: everything is a hit
    assert again.ensure_audio(split) == keys
    again.ensure_text(captions)
    assert again.stats == {"audio_built": 0, "text_built": 0}

    batch = collate([ClipDataset(split, dm.sample_rate, dm.num_samples, "start")[i] for i in range(len(split))])
    with torch.no_grad():
        fresh_a, fresh_t = audio(batch["audio"]), text(captions)
    cached_a, valid = again.audio_features(keys)
    assert valid.all()
    torch.testing.assert_close(cached_a.states, fresh_a.states, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached_a.pooled, fresh_a.pooled, rtol=0, atol=1e-6)
    cached_t = again.text_features(captions)
    assert torch.equal(cached_t.mask, fresh_t.mask)
    torch.testing.assert_close(cached_t.states[fresh_t.mask], fresh_t.states[fresh_t.mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(cached_t.pooled, fresh_t.pooled, rtol=0, atol=1e-5)
    # a caption never cached (a paraphrase) is encoded on the fly, in place
    mixed = again.text_features([captions[0], "a brand new caption", captions[1]])
    with torch.no_grad():
        ref = text([captions[0], "a brand new caption", captions[1]])
    torch.testing.assert_close(mixed.pooled, ref.pooled, rtol=0, atol=1e-5)


def test_invalidation_on_each_key_part(tmp_path, two_clips, encoders):
    audio, text = encoders
    dm = ClothoDataModule(root=str(two_clips))
    split = dm.split("val")  # 1 clip
    captions = split.captions[0]
    base = make_cache(tmp_path, audio, text, dm)
    keys = base.ensure_audio(split)
    base.ensure_text(captions)

    # crop settings: another crop mode (or rate / length) is another store
    other_crop = make_cache(tmp_path, audio, text, dm, crop="centre")
    other_crop.ensure_audio(split)
    assert other_crop.stats["audio_built"] == 1
    assert other_crop.audio_store.root != base.audio_store.root

    # encoder identity: other weights (another seed) miss, for audio and text
    torch.manual_seed(1)
    audio2 = ClapAudioEncoder("HTSAT-mini", freeze=True)
    other_audio = make_cache(tmp_path, audio2, text, dm)
    other_audio.ensure_audio(split)
    assert other_audio.stats["audio_built"] == 1
    text2 = TinyTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                            max_length=16, freeze=True)
    text2.load_tokenizer_state(text.tokenizer_state())
    other_text = make_cache(tmp_path, audio, text2, dm)
    other_text.ensure_text(captions)
    assert other_text.stats["text_built"] == len(set(captions))

    # the file's content: rewriting a clip (new mtime) is a miss for that clip only
    path = split.paths[0]
    wave, sr = sf.read(path)
    sf.write(path, wave[::-1].copy(), sr)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, max(st.st_mtime_ns, time.time_ns()) + 1_000_000))
    changed = make_cache(tmp_path, audio, text, dm)
    new_keys = changed.ensure_audio(split)
    assert changed.stats["audio_built"] == 1 and new_keys != keys
    unchanged = make_cache(tmp_path, audio, text, dm)
    unchanged.ensure_audio(dm.split("test"))
    unchanged.ensure_audio(split)
    assert unchanged.stats["audio_built"] == 2  # test split (never cached here) + nothing for val


@pytest.mark.slow
def test_training_with_the_cache(tiny_clotho, tmp_path, monkeypatch):
    """fit + test through the CLI with frozen encoders: the steps read the cache, audio is not decoded."""
    from coattn.cli import main
    from tests.test_cli import tiny_args

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    args = [*tiny_args(tiny_clotho), "--model.audio_encoder.init_args.freeze=true",
            "--model.text_encoder.init_args.freeze=true", f"--model.feature_cache={cache}"]
    seen = {}
    from coattn.train.module import CoAttnRetrieval

    original = CoAttnRetrieval.encode

    def spy(self, batch):
        seen["audio_shape"] = tuple(batch["audio"].shape)
        seen["cached"] = "audio_features" in batch and "text_features" in batch
        return original(self, batch)

    monkeypatch.setattr(CoAttnRetrieval, "encode", spy)
    assert main(["fit", *args]) == 0
    assert seen["cached"] and seen["audio_shape"][1] == 0  # no waveform was read for training
    shards = sorted(cache.rglob("*.keys.json"))
    assert len(list((cache / "audio").rglob("*.keys.json"))) >= 2  # train + val
    assert main(["test", *args, f"--ckpt_path={tmp_path / 'runs/demo_scratch/checkpoints/last.ckpt'}"]) == 0
    assert (tmp_path / "runs/demo_scratch/results/test/metrics.json").is_file()
    assert len(sorted(cache.rglob("*.keys.json"))) > len(shards)  # the test split was added
