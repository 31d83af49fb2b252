"""MultiDataModule: the weighted union, global clip identity, evaluation overlap, per-dataset loaders."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coattn.errors import ConfigError
from coattn.loss import same_clip_mask
from data_modules import AudioCapsDataModule, ClothoDataModule, MultiDataModule, WavCapsDataModule
from data_modules.datasets import WeightedEpochSampler, collate
from tests.data_trees import make_audiocaps, make_clotho, make_wavcaps


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Clotho (coattn layout, with metadata), AudioCaps and WavCaps (aac-datasets layout). WavCaps repeats
    recordings of the others: Clotho development sound 1000 and AudioCaps train clip 0 (shared: one clip id),
    Clotho evaluation sound 3001 and AudioCaps test clip 1 (evaluation overlap: left out of training)."""
    root = tmp_path_factory.mktemp("multi")
    clotho = make_clotho(root / "clotho")
    ac = make_audiocaps(root / "aac", layout="aac-datasets")
    make_wavcaps(root / "aac", {"FreeSound": ["1000", "3001", "77"], "AudioSet_SL": [f"Y{ac['train'][0]}.wav",
                                                                                      f"Y{ac['test'][1]}.wav"],
                                "SoundBible": ["5"]}, layout="aac-datasets")
    return root, clotho, ac


def multi(root, **kwargs) -> MultiDataModule:
    datasets = {"clotho": ClothoDataModule(root=str(root / "clotho")),
                "audiocaps": AudioCapsDataModule(root=str(root / "aac")),
                "wavcaps": WavCapsDataModule(root=str(root / "aac"))}
    return MultiDataModule(datasets=datasets, batch_size=4, eval_batch_size=4, sample_rate=16000, clip_seconds=0.5,
                           **kwargs)


def test_union_global_clip_ids_and_evaluation_overlap(trees):
    root, clotho, ac = trees
    dm = multi(root)
    assert dm.train == ["clotho", "audiocaps", "wavcaps"] and dm.val == ["clotho", "audiocaps"] == dm.test
    union = dm.split("train")
    # 6 Clotho + 6 AudioCaps + 6 WavCaps clips, minus the 2 WavCaps clips of an evaluation split
    assert len(union) == 16 and union.fnames[0] == f"clotho/{clotho['train'][0][0]}"
    wavcaps = dm.datasets["wavcaps"].split("train")
    assert sorted(wavcaps.excluded) == ["AudioSet_SL/Y" + ac["test"][1] + ".flac", "FreeSound/3001.flac"]
    ids = dict(zip(union.fnames, dm._clip_ids))
    assert ids["wavcaps/FreeSound/1000.flac"] == ids[f"clotho/{clotho['train'][0][0]}"]  # same Freesound sound
    assert ids[f"wavcaps/AudioSet_SL/Y{ac['train'][0]}.flac"] == ids[f"audiocaps/{ac['train'][0]}_30.flac"]
    assert len(set(dm._clip_ids)) == 14  # every other clip has its own id, across datasets too
    # the training batches carry those ids: the two recordings are one clip for the loss
    ds = dm._dataset("train")
    pair = [i for i, (c, _) in enumerate(ds.items) if union.fnames[c] in
            ("wavcaps/FreeSound/1000.flac", f"clotho/{clotho['train'][0][0]}")][:2]
    other = next(i for i, (c, _) in enumerate(ds.items) if union.fnames[c] == "wavcaps/FreeSound/77.flac")
    batch = collate([ds[(i, 7)] for i in (*pair, other)])
    assert batch.clip_index[0] == batch.clip_index[1] != batch.clip_index[2]
    mask = same_clip_mask(batch.caption_clip, batch.clip_index, torch.arange(3))
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]


def test_overlap_exclusion_can_be_switched_off(trees):
    dm = multi(trees[0], exclude_eval_overlap=False)
    assert len(dm.split("train")) == 18 and not dm.datasets["wavcaps"].split("train").excluded


def test_loaders_names_and_epoch_length(trees):
    dm = multi(trees[0], weights={"clotho": 2.0, "wavcaps": 1.0}, steps_per_epoch=5, val=["audiocaps", "clotho"],
               test=["audiocaps"])
    dm.setup("fit")
    assert dm.train == ["clotho", "wavcaps"] and dm.eval_names("val") == ["audiocaps", "clotho"]
    loader = dm.train_dataloader()
    assert len(loader) == 5  # the epoch is steps_per_epoch batches
    batch = next(iter(loader))
    assert batch.audio.shape == (4, 8000) and all(f.split("/")[0] in ("clotho", "wavcaps") for f in batch.fnames)
    val = dm.val_dataloader()
    assert [len(v.dataset) for v in val] == [3, 3]
    assert next(iter(val[0])).fnames == dm.datasets["audiocaps"].split("val").fnames
    assert dm.split("val").fnames == dm.datasets["audiocaps"].split("val").fnames  # callbacks see the first
    assert dm.eval_names("test") == ["audiocaps"] and dm.eval_names("predict") == ["audiocaps"]
    default = multi(trees[0])
    default.setup("fit")
    # default: one pass over the union's items: 6 Clotho clips x 5 captions + 6 AudioCaps + 4 WavCaps, batches of 4
    assert len(default.train_dataloader()) == (6 * 5 + 6 + 4) // 4


def test_relevance_files_come_from_the_dataset_of_each_loader(trees, tmp_path):
    root = trees[0]
    datasets = {"clotho": ClothoDataModule(root=str(root / "clotho"), relevance_files={"test": "rel.csv"},
                                           relevance_threshold=50.0),
                "audiocaps": AudioCapsDataModule(root=str(root / "aac"))}
    dm = MultiDataModule(datasets=datasets, test=["audiocaps", "clotho"])
    assert dm.relevance("test", 0) is None and dm.relevance("test", 1) == ("rel.csv", 50.0)
    with pytest.raises(ConfigError, match="unknown split"):
        ClothoDataModule(root=str(root / "clotho"), relevance_files={"eval": "rel.csv"})


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": {"clotho": 1.0, "nope": 1.0}}, r"weights: unknown dataset\(s\) \['nope'\]"),
    ({"train": ["clotho", "audiocaps"], "weights": {"clotho": 1.0}}, "one positive weight per training dataset"),
    ({"weights": {"clotho": 0.0}}, "one positive weight"),
    ({"val": ["wavcap"]}, r"val: unknown dataset"),
    ({"steps_per_epoch": 0}, "steps_per_epoch"),
])
def test_config_errors_name_the_key(trees, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        multi(trees[0], **kwargs)
    with pytest.raises(ConfigError, match="letters, digits"):
        MultiDataModule(datasets={"clotho v2": ClothoDataModule(root=str(trees[0] / "clotho"))})


def test_feature_cache_is_refused(trees):
    with pytest.raises(ConfigError, match="feature_cache"):
        multi(trees[0]).set_load_audio(False)


def test_weighted_sampler_honours_the_weights():
    """Counts per dataset over 20,000 draws. Each count is Binomial(n, p): sd = sqrt(n p (1 - p)) <= 71 items
    here, and a 5-sd tolerance makes a false failure less likely than 1e-6 per check (normal tail 5.7e-7),
    while a sampler that ignored the weights (proportional to sizes: 4 %, 16 %, 80 %) misses by > 100 sd."""
    groups = [list(range(0, 50)), list(range(50, 250)), list(range(250, 1250))]
    weights, n = [0.5, 0.3, 0.2], 20000
    sampler = WeightedEpochSampler(groups, weights, n, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        items = np.array([i for i, _ in sampler])
        counts = np.array([((items >= g[0]) & (items <= g[-1])).sum() for g in groups])
        for count, p in zip(counts, weights):
            assert abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)), (epoch, counts)
        # within a dataset every item comes once before any comes again (1000 items, ~4,000 draws: 3 or 4 each)
        per_item = np.bincount(items, minlength=1250)
        assert per_item[250:].max() - per_item[250:].min() <= 1
    sampler.set_epoch(1)
    again = [i for i, _ in sampler]
    sampler.set_epoch(2)
    assert again != [i for i, _ in sampler] and len(again) == n  # epochs differ, and replay under set_epoch
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] == again


def test_evaluation_loaders_are_named_by_the_data_module(trees, tmp_path):
    from types import SimpleNamespace

    from coattn.train.evaluation import EvalAccumulator, eval_loaders, relevance_metrics

    acc = EvalAccumulator()
    single = SimpleNamespace(datamodule=ClothoDataModule(root=str(trees[0] / "clotho")))
    assert eval_loaders(single, "val", acc) == [(0, None)]  # one dataset: val/t2a_mAP@10, as before
    named = SimpleNamespace(datamodule=multi(trees[0], val=["audiocaps", "clotho"]))
    assert eval_loaders(named, "val", acc) == [(0, "audiocaps"), (1, "clotho")]
    acc._parts = {0: {"x": []}, 1: {"x": []}}  # loaders without a data module: named by their index
    assert eval_loaders(SimpleNamespace(datamodule=None), "test", acc) == [(0, None), (1, "1")]
    rel = tmp_path / "rel.csv"
    rel.write_text("query,audio_filenames\nnot a caption,\"['x.wav']\"\n")
    dm = ClothoDataModule(root=str(trees[0] / "clotho"), relevance_files={"val": str(rel)})
    sanity = SimpleNamespace(datamodule=dm, sanity_checking=True)  # a few batches: no relevance scoring
    assert relevance_metrics(sanity, "val", 0, None, None) == ({}, {})
