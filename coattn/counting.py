"""The count head: does the clip hold each named event as many times as the caption says?

Pooled vectors, and the softmax-weighted average that pools the cascade's audio stream, keep what an
event sounds like and where, not how many times it happens: two barks and three barks average to the
same vector. The count head adds an explicit, differentiable count check to the pair score:

    text (once per caption)   w_i = sigmoid(a . x_i)                   token i names an event
                              q_i = softmax(C x_i) over 1..K            the count the caption claims for it
                              c_i = sum_k k q_ik
    audio (per pair)          o_t = sigmoid(onset(Y)_t)                 an occurrence starts at frame t
                              m_ti = sigmoid(<U y_t, V x_i> / sqrt(h) + b)   frame t is token i's event
                              n_i = sum_t o_t m_ti                      the occurrences of token i's event
    s_count = - sum_i w_i huber(n_i - c_i) / (sum_i w_i + eps)
    s_pair  = cos(text, audio) + beta * sg(s_count)      (beta > 0, learned from ``count_beta``; ``score_block``)

Y is the cascade's text-conditioned audio stream (``iterating``; ``count_audio: pair``) or the cascade's input
frames, which no caption has seen (``count_audio: clip``), x the caption's refined tokens; the onset reads Y through
a width-3 temporal convolution (an onset is a change between neighbouring frames).
Nothing here needs timings at evaluation. In training, with event timings (``coattn.time_binding.SceneEvents``),
``count_loss`` supervises each part on the positive pairs (``RetrievalLoss.count_weight``): onsets from the
occurrences, membership from the frames each phrase's event covers (as grounding does), the claimed count
from the number of occurrences of the phrase's event, event-ness from the phrase spans. By default (``detach``)
s_count enters the pair score detached: that supervised term alone trains the head, and the contrastive loss,
with the count variants of the captions ("a dog twice" -> "a dog three times") among its negatives, trains beta.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CountText:
    """The per-caption half of the count check, computed once per caption: event-ness logits (N, L; padding
    -inf), claimed-count logits (N, L, K), the tokens' membership keys (N, L, h), and from them w_i (N, L) and
    c_i (N, L), which every pair of the caption reads."""

    event_logits: torch.Tensor
    count_logits: torch.Tensor
    keys: torch.Tensor
    weight: torch.Tensor
    claimed: torch.Tensor

    @staticmethod
    def of(event_logits: torch.Tensor, count_logits: torch.Tensor, keys: torch.Tensor) -> "CountText":
        return CountText(event_logits, count_logits, keys, torch.sigmoid(event_logits.float()),
                         claimed_counts(count_logits))

    def index(self, idx) -> "CountText":
        return CountText(self.event_logits[idx], self.count_logits[idx], self.keys[idx], self.weight[idx],
                         self.claimed[idx])


@dataclass
class CountAudio:
    """The per-pair half: onset logits (P, T) and membership logits (P, T, L)."""

    onset_logits: torch.Tensor
    member_logits: torch.Tensor


class CountHead(nn.Module):
    """The count check of the module docstring, at cascade width ``width``.

    Args:
        width: the cascade's width d.
        max_count: K, the largest count a caption can claim (counts above K are read as K).
        hidden: h, the width of the frame-token membership projections.
        beta: the initial weight of s_count in the pair score (then learned). At 1.0 one count off on one of
            three events costs ~0.125 in cosine units, 2-4 logits at the learned temperatures; the gradient the
            contrastive loss gives beta is small, so its start matters (docs/time.md, section 4).
        reads: which frames the audio side reads: ``pair``, the cascade's text-conditioned stream Y; ``clip``, the
            cascade's input frames, which no caption has seen. Measured (docs/ablations.md, "Fifth pass"): from Y the
            found count follows the caption's claim (one clip, "twice" -> n = 2.0, "three times" -> n = 2.8), so a
            caption with a count changed finds its own count in the clip.
        detach: s_count enters the pair score detached from the head and the cascade: only the supervised
            term (``count_loss``) trains them, the contrastive loss trains beta alone. Measured: trained through
            the score at beta 1.0 the contrastive gradient disturbed the supervised parts (membership loss 0.17-0.20
            against 0.04-0.06 at the same step) and held validation mAP at 0.94 where beta 0.1 had 0.98.
    """

    def __init__(self, width: int, max_count: int = 4, hidden: int = 64, beta: float = 1.0, detach: bool = True,
                 reads: Literal["pair", "clip"] = "pair"):
        super().__init__()
        self.detach = detach
        if reads not in ("pair", "clip"):
            raise ValueError(f"count_audio must be 'pair' or 'clip', got {reads!r}")
        self.reads = reads
        if max_count < 2:
            raise ValueError(f"count_head: the largest count must be >= 2, got {max_count}")
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"count_beta must be > 0, got {beta}")
        self.max_count, self.hidden = max_count, hidden
        self.event = nn.Linear(width, 1)
        self.count = nn.Linear(width, max_count)
        self.keys = nn.Linear(width, hidden)
        self.queries = nn.Linear(width, hidden)
        self.member_bias = nn.Parameter(torch.zeros(()))
        self.onset = nn.Sequential(nn.Conv1d(width, hidden, kernel_size=3, padding=1), nn.GELU(),
                                   nn.Conv1d(hidden, 1, kernel_size=1))
        self.log_beta = nn.Parameter(torch.tensor(math.log(beta)))

    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.exp()

    def text(self, states: torch.Tensor, mask: torch.Tensor) -> CountText:
        """Per caption: (N, L, d) refined tokens -> ``CountText``."""
        return CountText.of(self.event(states).squeeze(-1).masked_fill(~mask, float("-inf")), self.count(states),
                            self.keys(states))

    def frame_parts(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Onset logits (N, T) and membership queries (N, T, h) of N frame sequences (N, T, d)."""
        y = frames * frame_mask[..., None].to(frames.dtype)
        return self.onset(y.transpose(1, 2)).squeeze(1), self.queries(y)

    def audio(self, text: CountText, rows: torch.Tensor, stage, inv: torch.Tensor,
              stream: tuple[torch.Tensor, torch.Tensor]) -> tuple[CountAudio, torch.Tensor]:
        """Per pair: the audio side of the b x r pairs (caption ``rows[i]``, clip ``inv[i, c]`` of the ``ClipStage``
        ``stage``) and their frame mask (b r, T). ``reads: pair``: from the pairs' text-conditioned ``stream``
        (b r, T, d), row i's r clips consecutive; ``clip``: onsets and queries from the clips' input frames, once
        per clip, then gathered for the pairs."""
        b, r = inv.shape
        if self.reads == "pair":
            my = stream[1]
            onset, q = self.frame_parts(*stream)
        else:
            flat = inv.reshape(-1)
            onset, q = self.frame_parts(stage.inputs, stage.mask)
            onset, q, my = onset[flat], q[flat], stage.mask[flat]
        t = q.shape[1]
        member = torch.einsum("brth,blh->brtl", q.view(b, r, t, self.hidden), text.keys[rows])
        member = member / math.sqrt(self.hidden) + self.member_bias
        return CountAudio(onset, member.reshape(b * r, t, -1)), my

    def score(self, text: CountText, rows: torch.Tensor, audio: CountAudio, frame_mask: torch.Tensor,
              r: int) -> torch.Tensor:
        """s_count of the b x r pairs: (b, r), <= 0, and 0 exactly when every event token's counted
        occurrences equal its claimed count."""
        b = len(rows)
        found = occurrences(audio, frame_mask).view(b, r, -1)  # (b, r, L)
        claimed = text.claimed[rows][:, None, :]  # (b, 1, L)
        w = text.weight[rows][:, None, :]  # padding: sigmoid(-inf) = 0
        miss = F.huber_loss(found, claimed.expand_as(found), reduction="none", delta=0.5)
        s = -(w * miss).sum(-1) / (w.sum(-1) + 1e-6)
        return s.detach() if self.detach else s


def claimed_counts(count_logits: torch.Tensor) -> torch.Tensor:
    """Expected claimed count sum_k k q_k, (..., K) logits -> (...)."""
    k = torch.arange(1, count_logits.shape[-1] + 1, device=count_logits.device, dtype=torch.float32)
    return (count_logits.float().softmax(-1) * k).sum(-1)


def occurrences(audio: CountAudio, frame_mask: torch.Tensor) -> torch.Tensor:
    """n_i = sum_t o_t m_ti over real frames: (P, L)."""
    onset = torch.sigmoid(audio.onset_logits.float()) * frame_mask.to(torch.float32)
    return torch.einsum("pt,ptl->pl", onset, torch.sigmoid(audio.member_logits.float()))


# ---------------------------------------------------------------------------------------------- supervision
@dataclass
class CountTargets:
    """What the timings say about the positive pairs: onset frames (B, T) float, each frame's event (B, T) and
    each token's event (B, L) long (-1: none), the number of occurrences of each token's event (B, L) long."""

    onsets: torch.Tensor
    frame_event: torch.Tensor
    token_event: torch.Tensor
    token_count: torch.Tensor


def count_targets(times: torch.Tensor, frame_mask: torch.Tensor, token_event: torch.Tensor,
                  frame_event: torch.Tensor | None = None) -> CountTargets:
    """Targets from ``SceneEvents.times`` (B, O, 3) (occurrences as window fractions), the frames' mask and each
    token's event (``coattn.time_binding.token_events``). Frame t of T covers [t / T, (t + 1) / T) and shows an
    occurrence when its centre lies inside it (``frame_events``); an occurrence starts on its first such frame
    (or on its midpoint's frame when it is shorter than a frame), so that the onset frame is also one of the
    event's frames: n_i = sum_t o_t m_ti counts it. ``frame_event``: ``frame_events`` of the same, if at hand."""
    from coattn.time_binding import frame_events

    b, t = frame_mask.shape
    onsets = torch.zeros(b, t, device=frame_mask.device)
    n_events = int(times[..., 0].max().item()) + 1 if times.numel() else 0
    per_event = torch.zeros(b, max(n_events, 1), dtype=torch.long)
    for i in range(b):
        for e, on, off in times[i].tolist():
            if e < 0:
                continue
            first = max(0, math.ceil(on * t - 0.5))  # the first frame whose centre (f + 1/2) / T >= on
            if first >= t or (first + 0.5) / t > off:
                first = min(t - 1, int((on + off) / 2 * t))
            onsets[i, first] = 1.0
            per_event[i, int(e)] += 1
    onsets = onsets * frame_mask.to(onsets.dtype)
    per_event = per_event.to(token_event.device)
    token_count = torch.where(token_event >= 0, per_event.gather(1, token_event.clamp_min(0)),
                              torch.zeros_like(token_event))
    if frame_event is None:
        frame_event = frame_events(times.to(frame_mask.device), frame_mask)
    return CountTargets(onsets, frame_event, token_event, token_count)


def count_loss(text: CountText, audio: CountAudio, frame_mask: torch.Tensor, token_mask: torch.Tensor,
               targets: CountTargets) -> dict[str, torch.Tensor]:
    """Supervised terms of the count head on B positive pairs (pair b = caption b, clip b), each a mean BCE or
    CE: ``onset`` over real frames of clips with timings, ``member`` over (real frame, event token), ``claim``
    over event tokens (class = min(count, K) - 1), ``event`` over real tokens of captions with phrases; and
    ``found``, the Huber loss (delta 0.5, as the score's) of n_i against the true count over event tokens."""
    timed = (targets.onsets.sum(1) > 0)  # clips with occurrences
    fm = frame_mask & timed[:, None]
    out = {"onset": _masked_bce(audio.onset_logits, targets.onsets, fm)}
    ev = targets.token_event >= 0
    pairs = fm[:, :, None] & ev[:, None, :]
    same = (targets.frame_event[:, :, None] == targets.token_event[:, None, :]).float()
    out["member"] = _masked_bce(audio.member_logits, same, pairs)
    k = text.count_logits.shape[-1]
    cls = (targets.token_count.clamp(1, k) - 1)
    out["claim"] = (F.cross_entropy(text.count_logits[ev].float(), cls[ev]) if bool(ev.any())
                    else text.count_logits.sum() * 0.0)
    named = token_mask & ev.any(1, keepdim=True)
    logits = text.event_logits.masked_fill(~token_mask, 0.0)
    out["event"] = _masked_bce(logits, ev.float(), named)
    # what the score reads: the occurrences n_i counted on each event token against the true count (the per-frame
    # terms alone leave n_i free to miss or double an onset one frame apart; weighted by count_found_weight)
    found_pairs = ev & timed[:, None]
    if bool(found_pairs.any()):
        n = occurrences(audio, fm)
        out["found"] = F.huber_loss(n[found_pairs], targets.token_count[found_pairs].float(), delta=0.5)
    else:
        out["found"] = audio.onset_logits.sum() * 0.0
    return out


def _masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask].float(), target[mask].float())


def pair_counts(model, text_p, rows: torch.Tensor, audio_p, clips: torch.Tensor) -> tuple[CountAudio, torch.Tensor]:
    """The count head's audio side of the pairs (caption ``rows[p]``, clip ``clips[p]``) and their frame mask
    (P, T): one cascade pass per pair (the training term's positives, ``docs/real/count_head_check.py``)."""
    uniq, inv = torch.unique(clips, return_inverse=True)
    stage = model.cascade.clip_stage(audio_p, uniq)
    _, _, *stream = model.cascade.pair_vectors(text_p, rows, stage, inv[:, None], frames=True)
    return model.count_head.audio(text_p.count, rows, stage, inv[:, None], tuple(stream))


def require_count_head(model) -> None:
    """The one-line error of ``loss.count_weight > 0`` on a model without a count head."""
    if model.count_head is None:
        from coattn.errors import ConfigError
        raise ConfigError("model.loss.count_weight > 0 trains the count head: set model.count_head (the largest "
                          "count a caption claims, e.g. 4) or model.loss.count_weight: 0")


def positive_count_loss(model, text_p, audio_p, events, labels: tuple[torch.Tensor, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """``count_loss`` of a training batch: one extra cascade pass of the B positive pairs (caption b, clip b of the
    prepared ``text_p``, ``audio_p``); ``labels``: each frame's and token's event
    (``coattn.time_binding.positive_labels``), counts from ``events.times``."""
    require_count_head(model)
    rows = torch.arange(len(text_p), device=audio_p.states.device)
    found, my = pair_counts(model, text_p, rows, audio_p, rows)
    frames, tokens = labels
    return count_loss(text_p.count, found, my, text_p.mask, count_targets(events.times, my, tokens, frames))


def rewrite_count_loss(model, captions: list[str], audio_p, events, seed: int) -> dict[str, torch.Tensor] | None:
    """``count_loss`` of each caption's count rewrite against its own, unchanged clip (``count_rewrites``: "a dog
    barks twice" -> "... three times", "a cuckoo" -> "a cuckoo twice"), less the claimed-count term (the rewrite
    claims another count, the head should read it): onsets, membership and the found count n_i are taught the
    clip's true occurrences under a caption that claims otherwise, so that n is taught not to follow the claim
    (measured: it still does, less; docs/ablations.md "Sixth pass"). One text encoding and one cascade pass of the
    rewrites; None when no caption of the batch has a count rewrite."""
    from coattn.negatives import count_rewrites
    from coattn.time_binding import token_events

    texts, owners, phrases = count_rewrites(captions, events, seed)
    if not texts:
        return None
    dev = audio_p.states.device
    owner = torch.tensor(owners, device=dev)
    text_v = model.prepare_text(model.encode_text(texts))
    found, my = pair_counts(model, text_v, torch.arange(len(texts), device=dev), audio_p, owner)
    tokens = token_events(model.text_encoder.token_offsets(texts), phrases, text_v.mask.shape[1], dev)
    targets = count_targets(events.times[owner.to(events.times.device)], my, tokens.masked_fill(~text_v.mask, -1))
    parts = count_loss(text_v.count, found, my, text_v.mask, targets)
    del parts["claim"]
    return parts
