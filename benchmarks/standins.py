"""Full-size stand-ins for the pretrained parts, random weights in the real file layouts.

The paper's configurations point at LAION-CLAP's ``630k-audioset-best.pt`` (HTS-AT tiny) and at
``roberta-base``; neither can be downloaded here. These builders write files that the loaders read
exactly as they would read the real ones, with the real architectures and sizes, so that the full
size runs through ``coattn fit`` / ``coattn test`` (tests/test_full_size.py) and the benchmarks:

    clap_checkpoint(path)     {"epoch", "name", "state_dict": {"module.audio_branch.*" (HTS-AT tiny,
                              31.3 M), "module.text_branch.*" (a RoBERTa-base), "module.audio_projection.*",
                              "module.text_projection.*", "module.logit_scale_a/t"}}: the official layout
    roberta_folder(path, captions)   a Hugging Face folder: config.json + model.safetensors of a
                              roberta-base-sized RobertaModel (124.6 M) and a byte-level BPE tokenizer
                              trained on ``captions`` (the real 50,265-token vocabulary cannot be made
                              offline; ``HFTextEncoder`` refuses the 5-token placeholder that
                              ``RobertaTokenizer.from_pretrained`` gives offline, ../shared/ENVIRONMENT.md)

    python benchmarks/standins.py OUT_DIR      # writes OUT_DIR/630k-audioset-best.pt and OUT_DIR/roberta-base
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def clotho_captions(root: Path = SHARED_DATA / "clotho") -> list[str]:
    """Every caption of the real Clotho caption files under ``root`` (development + evaluation: 19,690)."""
    out = []
    for path in sorted(root.glob("clotho_captions_*.csv")):
        with open(path, newline="", encoding="utf-8") as f:
            out += [row[f"caption_{k}"] for row in csv.DictReader(f) for k in range(1, 6)]
    return out


def roberta_folder(path: Path, captions: list[str], seed: int = 0) -> Path:
    """A local ``roberta-base``-sized model folder (random weights) with a BPE tokenizer of ``captions``."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    path = Path(path)
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                           intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)  # roberta-base
    RobertaModel(config).save_pretrained(path, safe_serialization=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(captions, vocab_size=config.vocab_size, min_frequency=2, show_progress=False,
                            special_tokens=SPECIAL_TOKENS)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                  mask_token="<mask>", model_max_length=512)
    tok.save_pretrained(path)
    return path


def clap_checkpoint(path: Path, text_folder: Path | None = None, seed: int = 0) -> Path:
    """A non-fusion LAION-CLAP checkpoint in the official layout, HTS-AT tiny audio branch (random)."""
    from coattn.encoders import ClapAudioEncoder

    torch.manual_seed(seed)
    audio = ClapAudioEncoder("HTSAT-tiny", checkpoint=None).model
    sd = {f"module.audio_branch.{k}": v for k, v in audio.state_dict().items()}
    if text_folder is not None:  # CLAP's fine-tuned RoBERTa: the same architecture as the text tower
        from safetensors.torch import load_file
        sd.update({f"module.text_branch.{k}": v for k, v in load_file(Path(text_folder) / "model.safetensors").items()})
    for name, width in (("audio", 768), ("text", 768)):  # CLAP's MLP heads: Linear-ReLU-Linear into 512
        head = torch.nn.Sequential(torch.nn.Linear(width, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512))
        sd.update({f"module.{name}_projection.{k}": v for k, v in head.state_dict().items()})
    sd["module.logit_scale_a"] = sd["module.logit_scale_t"] = torch.tensor(2.659)  # log(1 / 0.07)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 45, "name": "standin", "state_dict": sd}, path)
    return path


def build(out: Path) -> tuple[Path, Path]:
    """(CLAP checkpoint, RoBERTa folder) under ``out``, made once (reused when both exist)."""
    out = Path(out)
    ckpt, folder = out / "630k-audioset-best.pt", out / "roberta-base"
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        roberta_folder(folder, clotho_captions())
    if not ckpt.is_file():
        clap_checkpoint(ckpt, folder)
    return ckpt, folder


if __name__ == "__main__":
    print(*build(Path(sys.argv[1] if len(sys.argv) > 1 else "standins")), sep="\n")
