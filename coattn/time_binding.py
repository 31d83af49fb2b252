"""Time binding: what teaches the cascade *when* things happen, where a pooled (dual) vector cannot tell.

Three levers of ``coattn.loss.RetrievalLoss`` (docs/time.md has the equations and keys):

    residual        the pair term trains the fused score: z = (s_pair + lambda_r * sg(s_dual)) / tau, so
                    the cascade learns what the dual encoder misses instead of relearning the events
    swap negatives  a caption that states an order also ranks its own clip with its event segments
                    reversed at the event boundaries (a feature-level order twin: same frames, same
                    sounds, other order; ``swap_segments``)
    grounding       the cross-attention of the positive pair is taught that event e's frames attend to
                    the words naming e, and e's words to e's frames (``grounding_loss``)

Event timings reach the loss as ``SceneEvents`` (one per training batch, from ``coattn.scenes``):
occurrences as fractions of the model's window, so frame t of T real+padded frames covers
[t / T, (t + 1) / T): frames per second = T / (window samples / sample rate).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from coattn.features import SequenceFeatures


@dataclass
class SceneEvents:
    """Event timings and phrases of a training batch (item b = caption b, clip b).

    times: (B, O, 3) float: per occurrence (event index, onset, offset), onset/offset as fractions of the
        window, time order; rows padded with event index -1. A clip without metadata has no occurrences.
    phrases: per caption, (event index, char start, char end) of the words naming an event.
    """

    times: torch.Tensor
    phrases: list[list[tuple[int, int, int]]]

    def __len__(self) -> int:
        return self.times.shape[0]

    def index(self, idx: torch.Tensor) -> "SceneEvents":
        return SceneEvents(self.times[idx], [self.phrases[i] for i in idx.tolist()])

    @staticmethod
    def build(occurrences: list[list[tuple[int, float, float]]], phrases: list[list[tuple[int, int, int]]]
              ) -> "SceneEvents":
        width = max((len(o) for o in occurrences), default=0)
        times = torch.full((len(occurrences), width, 3), -1.0)
        for b, occ in enumerate(occurrences):
            if occ:
                times[b, :len(occ)] = torch.tensor(occ, dtype=torch.float32)
        return SceneEvents(times, [list(p) for p in phrases])


def frame_events(times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) long: the event each frame shows (-1: none, or padding). A frame belongs to an occurrence
    when its centre (t + 1/2) / T lies in [onset, offset]; an occurrence shorter than a frame still gets
    the frame holding its midpoint."""
    b, t = mask.shape
    out = torch.full((b, t), -1, dtype=torch.long, device=mask.device)
    centre = (torch.arange(t, device=mask.device, dtype=torch.float32) + 0.5) / t
    for i in range(b):
        for e, on, off in times[i].tolist():
            if e < 0:
                continue
            inside = (centre >= on) & (centre <= off)
            inside[min(t - 1, int((on + off) / 2 * t))] = True
            out[i, inside & mask[i]] = int(e)
    return out


def event_cuts(times: torch.Tensor, n_real: torch.Tensor, n_frames: int) -> list[list[int]]:
    """Per clip, the frames where one event's segment ends and the next one's starts: halfway between
    the last offset of event e and the first onset of event e + 1 (in time order), strictly increasing
    inside (0, n_real). [] when the clip has fewer than two events (or no room to cut)."""
    out = []
    for i in range(times.shape[0]):
        spans: dict[int, list[float]] = {}
        for e, on, off in times[i].tolist():
            if e >= 0:
                s = spans.setdefault(int(e), [on, off])
                s[0], s[1] = min(s[0], on), max(s[1], off)
        order = sorted(spans.values())
        n = int(n_real[i])
        cuts, last = [], 0
        for (_, off), (on, _) in zip(order, order[1:]):
            c = min(max(round((off + on) / 2 * n_frames), last + 1), n - 1)
            if c <= last:
                cuts = []
                break
            cuts.append(c)
            last = c
        out.append(cuts)
    return out


def swap_segments(feats: SequenceFeatures, cuts: list[list[int]]) -> tuple[SequenceFeatures, list[list[int]]]:
    """Each clip's real frames cut at ``cuts`` into event segments S_1 .. S_E and put back as S_E .. S_1
    (for two events: swapped); padding stays at the end, a clip without cuts is unchanged. Returns the
    new features and the new cuts, so that applying it again gives the original frames back."""
    states = feats.states.clone()
    n_real = feats.mask.sum(1).tolist()
    new_cuts = []
    for i, c in enumerate(cuts):
        n = int(n_real[i])
        if not c:
            new_cuts.append([])
            continue
        bounds = [0, *c, n]
        pieces = [feats.states[i, a:z] for a, z in zip(bounds, bounds[1:])][::-1]
        states[i, :n] = torch.cat(pieces)
        lengths = [p.shape[0] for p in pieces]
        new_cuts.append([sum(lengths[:k]) for k in range(1, len(lengths))])
    return SequenceFeatures(states, feats.mask, feats.pooled), new_cuts


def token_events(offsets: list[list[tuple[int, int]]], phrases: list[list[tuple[int, int, int]]],
                 length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, length) long: the event whose phrase each token overlaps (-1: none). ``offsets``: each token's
    (char start, char end) in its caption (the tokenizer's ``return_offsets_mapping``; special tokens
    (0, 0)); ``phrases``: ``SceneEvents.phrases``."""
    out = torch.full((len(offsets), length), -1, dtype=torch.long)
    for i, (offs, spans) in enumerate(zip(offsets, phrases)):
        for j, (a, z) in enumerate(offs[:length]):
            if z > a:
                owners = {e for e, s, t in spans if a < t and s < z}
                if len(owners) == 1:
                    out[i, j] = owners.pop()
    return out.to(device)


def grounding_loss(attn: torch.Tensor, query_group: torch.Tensor, key_group: torch.Tensor) -> torch.Tensor:
    """Mean over grounded queries of -log(share of its event attention that lands on its own event).

    attn: (P, Lq, Lk) attention weights (rows sum to 1 over real keys; heads averaged); query_group
    (P, Lq), key_group (P, Lk): event index of each position, -1 for none. For a query q of event e
    with event keys in its row: r_q = sum_{k in e} a_qk / sum_{k in any event} a_qk, loss = -log r_q.
    Attention to words that name no event (the template, "then") is free; so the loss is 0 exactly
    when no event position attends to another event's positions, and > 0 otherwise. Queries whose
    own event has no key in the row do not count; no counted query: 0.
    """
    a = attn.float()
    key_any = (key_group >= 0).float()  # (P, Lk)
    own = (query_group[:, :, None] == key_group[:, None, :]) & (query_group[:, :, None] >= 0)  # (P, Lq, Lk)
    mass_own = (a * own).sum(-1)
    mass_all = (a * key_any[:, None, :]).sum(-1)
    counted = own.any(-1)
    if not bool(counted.any()):
        return attn.new_zeros((), dtype=torch.float32)
    ratio = mass_own[counted] / mass_all[counted].clamp_min(1e-12)
    return -torch.log(ratio.clamp_min(1e-12)).mean()


def maps_grounding_loss(maps: dict[str, list[torch.Tensor]], frame_group: torch.Tensor,
                        token_group: torch.Tensor) -> torch.Tensor:
    """``grounding_loss`` averaged over the guided attentions of ``capture_attention(..., keep_grad=True)``
    of the P positive pairs: audio layers (frames query tokens) and, for single / stacking, text layers
    (tokens query frames). Heads are averaged first."""
    terms = []
    for name, calls in maps.items():
        audio_side = name.startswith("audio_layers")
        for w in calls:  # (P, h, Lq, Lk)
            q, k = (frame_group, token_group) if audio_side else (token_group, frame_group)
            terms.append(grounding_loss(w.mean(1), q, k))
    return torch.stack(terms).mean() if terms else frame_group.new_zeros((), dtype=torch.float32)


def fold_batch_norm(linear: torch.nn.Linear, norm: torch.nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``linear(norm(x))`` as one linear map, with the norm's running statistics."""
    inv = norm.weight / torch.sqrt(norm.running_var + norm.eps) if norm.affine else 1.0 / torch.sqrt(
        norm.running_var + norm.eps)
    shift = (norm.bias if norm.affine else 0.0) - norm.running_mean * inv
    return linear.weight * inv[None, :], linear.bias + linear.weight @ shift


@torch.no_grad()
def pair_heads_from_dual(model) -> list[str]:
    """Start the pair heads (``pair_text``, ``pair_audio``: cascade width -> joint space) from the trained dual
    heads (``dual_text``, ``dual_audio``: encoder width -> joint space) where the widths agree and the dual
    head is linear; a ``feature_norm`` BatchNorm is folded in with its running statistics. Returns the heads
    copied (["text", "audio"] or fewer)."""
    copied = []
    for side in ("text", "audio"):
        dual, pair = getattr(model, f"dual_{side}"), getattr(model, f"pair_{side}")
        if not isinstance(dual.proj, torch.nn.Linear) or dual.proj.weight.shape != pair.proj.weight.shape:
            continue
        w, b = dual.proj.weight, dual.proj.bias
        if isinstance(dual.norm, torch.nn.BatchNorm1d):
            w, b = fold_batch_norm(dual.proj, dual.norm)
        pair.proj.weight.copy_(w)
        pair.proj.bias.copy_(b)
        copied.append(side)
    return copied


def residual_scores(scores: torch.Tensor, dual: torch.Tensor | None, lam: float) -> torch.Tensor:
    """s_pair + lambda_r * sg(s_dual) (``dual`` detached: the pair term does not train the dual heads)."""
    if not lam or dual is None:
        return scores
    return scores + lam * dual.detach().float()


def positive_labels(model, text_p, frame_mask: torch.Tensor, captions: list[str],
                    events: SceneEvents) -> tuple[torch.Tensor, torch.Tensor]:
    """The event of each frame (B, T), from ``events.times``, and of each real token (B, L), from
    ``events.phrases`` through the tokenizer's offsets, for the B positive pairs of a training batch: read once
    per step by the grounding and the count terms."""
    dev = frame_mask.device
    frames = frame_events(events.times.to(dev), frame_mask)
    tokens = token_events(model.text_encoder.token_offsets(captions), events.phrases, text_p.mask.shape[1], dev)
    return frames, tokens.masked_fill(~text_p.mask, -1)


def positive_grounding(model, text_p, audio_p, labels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The grounding term of a training batch: one extra cascade pass over the B positive pairs (caption b,
    clip b) with their guided attention recorded (with gradients); ``labels``: ``positive_labels``
    (``maps_grounding_loss``)."""
    from coattn.coattention import capture_attention

    rows = torch.arange(len(text_p), device=audio_p.states.device)
    with capture_attention(model.cascade, "guided", keep_grad=True) as maps:
        model.score_pairs(text_p, rows, audio_p, rows)
    return maps_grounding_loss(maps, *labels)
