"""sample: the stepping OP that turns text tokens into image token grids, for any model
family (ops/families/base.py: the family's SamplingModel and its RowCache).

Iteration-level batching: rows join the running batch between steps and leave the
moment their last token is sampled. Each live row holds one KV-cache slot (two with
classifier-free guidance: the caption's and the empty caption's); slots stay packed
in 0..m-1 so a decode step reads the cache through views (an eviction moves
only the rows past the new end into the holes). A request's candidates share
one prefill of their prompt, copied slot to slot; the empty caption's prefill (the
family's null prompt) is computed once at setup.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

from tessera.ops.decoding import BucketedDecoder
from tessera.ops.families import RowCache
from tessera.ops.messages import CandidateRow, SampledCandidate, TokenizedPrompt
from tessera.ops.sampling import guide, row_uniforms, sample_tokens
from tessera.ops.shared import LOG, ModelOp, ModelSettings, candidate_seed, to_png
from tessera.server.engine import SteppingOp, StepProgress, StepResult, StepRow
from tessera.server.engine.platforms import CALL_MODES


# Weight files (float32 on disk) past which a decode step is bound by reading its weights (see
# SampleOp.steps_beside): DALLE-pytorch 512 x 8 is 0.4 GB, DALL·E Mini's halves 1.9 GB.
WEIGHT_BOUND_FILE_BYTES = 1 << 30


@dataclass(eq=False)
class _Row:
    key: Hashable
    seed: int
    candidate_index: int
    params: tuple[float, int, float, float]  # temperature, top_k, top_p, guidance_scale
    preview_every: int
    uniforms: torch.Tensor                   # (image_len,) float64, this row's randomness
    tokens: list[int] = field(default_factory=list)

    @property
    def guided(self) -> bool:
        return self.params[3] != 1.0


@dataclass
class SampleSettings(ModelSettings):
    # True: a running batch finishes before new rows join (for comparison only).
    static_batching: bool = False
    # The decode step: "off" (eager), "padded", "compile" (torch.compile per bucket) or
    # "cuda_graph"; "auto" is the device's platform's choice: cuda_graph on a GPU, off on a CPU
    # (docs/performance.md).
    decode_mode: str = "auto"
    decode_buckets: list[int] | None = None  # batch sizes (rows); default powers of two up to the cache's slots
    # Where a step's tokens are picked from its logits (float64 softmax, top-k/top-p,
    # inverse CDF): "device" (where the model runs), "cpu", or "auto" = device (docs/performance.md, On a GPU).
    # The same on a CPU; on a GPU, "cpu" copies the logits to the host every step.
    sample_on: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decode_mode not in ("auto", *CALL_MODES):
            raise ValueError(f"decode_mode: must be one of auto, {', '.join(CALL_MODES)}; got {self.decode_mode!r}")
        if self.decode_buckets is not None and not all(b > 0 for b in self.decode_buckets):
            raise ValueError(f"decode_buckets: must be positive row counts, got {self.decode_buckets}")
        if self.sample_on not in ("auto", "device", "cpu"):
            raise ValueError(f"sample_on: must be auto, device or cpu; got {self.sample_on!r}")


class SampleOp(SteppingOp, ModelOp):
    Settings = SampleSettings
    # Two workers: on a CPU, past half a batch of rows the second steps beside the turn, on its
    # share of the cores (docs/performance.md); on a GPU one stepping worker per device runs.
    config_defaults = {"batch_size": 64, "concurrency": 2}

    @property
    def joins_mid_run(self) -> bool:  # read by the engine's scheduler on its own instance
        return not self.settings.static_batching

    @classmethod
    def steps_beside(cls, settings: dict) -> bool:
        """A second sampler worker beside the turn pays where a step is bound by dispatch: the
        bundled model (2 workers served 5-35% more images/s at 128 rows in flight) and
        DALLE-pytorch at 512 x 8 (about 100 MB of bf16 weights: 20% more at c=32). It does not
        where a step reads hundreds of MB of weights (DALL·E Mini, 0.9 GB in bf16: no gain at
        c=16), and there a second worker's cache costs GiB (1.9 for Mini in bf16):
        docs/performance/precision-2026-12-06. The weights' size comes from the files."""
        from tessera.ops.families import ModelSpec, weight_file_bytes
        try:
            return weight_file_bytes(ModelSpec.of(settings.get("model")).path) < WEIGHT_BOUND_FILE_BYTES
        except (OSError, RuntimeError):  # files that name no model are refused at setup, with the reason
            return True

    def setup(self, device: str) -> None:
        super().setup(device)
        self.model = self.bundle.transformer
        self.image_len = self.model.image_len
        self.dtype = next(self.model.parameters()).dtype  # the cache's too
        self.decode_mode = self.compute.call_mode(self.settings.decode_mode)
        if self.decode_mode != "off" and not getattr(self.model, "graphable", False):
            if self.settings.decode_mode != "auto":
                LOG.warning("sample: the %s model's step cannot be compiled or captured; decode_mode %s "
                            "runs eagerly", self.bundle.kind, self.decode_mode)
            self.decode_mode = "off"
        self.pick_device = torch.device("cpu" if self.settings.sample_on == "cpu" else device)
        self.rows: list[_Row] = []
        self.slots: list[tuple[_Row, bool]] = []  # slot j -> (row, is the unconditional slot)
        # The whole cache now, after checking it fits: a model too big for its batch_size fails at
        # start-up with a line saying what fits, never with an out-of-memory crash under load.
        slots = 2 * self.capacity
        need, free = cache_bytes(self.model, slots, self.dtype), self.compute.free_memory()
        if free is not None and need > 0.9 * free:
            fits = max(int(0.9 * free / max(need / slots, 1)) // 2, 0)
            raise MemoryError(
                f"sample: the {self.bundle.kind} model's cache for {self.capacity} rows (x2 for guidance) needs "
                f"{need / 2**30:.1f} GiB and {free / 2**30:.1f} GiB is free on {device}: set "
                f"graph.ops.sample.batch_size to at most {fits}" if fits else
                f"sample: not even one row of the {self.bundle.kind} model's cache fits in the "
                f"{free / 2**30:.1f} GiB free on {device} beside its weights")
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        LOG.info("sample: %s weights %.2f GiB as %s (shared by the workers of this process), cache for %d rows: "
                 "%.2f GiB on %s", self.bundle.kind, weights / 2**30, str(self.dtype).removeprefix("torch."),
                 self.capacity, need / 2**30, device)
        with torch.inference_mode():
            self.cache = self.model.new_cache(slots, device, self.dtype)
            self.decoder = self._decoder(self.cache)
            # The null prompt's prefill, once: every guided row's unconditional twin starts from a copy.
            scratch = self.model.new_cache(1, device, self.dtype)
            empty = torch.tensor([self.bundle.tokenizer.empty()], device=device)
            self.uncond_logits = self.model.prefill(empty, scratch, torch.tensor([0], device=device))[0]
            self.uncond_prefix = scratch.snapshot(0)

    # -- the engine's view -------------------------------------------------------------------
    def split(self, value: TokenizedPrompt) -> list[CandidateRow]:
        return [CandidateRow(value.text, candidate_seed(value.seed, i), i, value.sampling,
                             value.preview_every if i == 0 else 0)
                for i in range(value.num_candidates)]

    def merge(self, value: TokenizedPrompt, outputs: list[SampledCandidate]) -> list[SampledCandidate]:
        return outputs

    @property
    def active(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def admit(self, rows: list[StepRow]) -> dict[Hashable, BaseException]:
        if len(self.rows) + len(rows) > self.capacity:
            raise RuntimeError(f"admitting {len(rows)} rows would exceed capacity {self.capacity}")
        values: list[CandidateRow] = [r.value for r in rows]
        new = [_Row(r.key, v.seed, v.candidate_index,
                    (float(v.sampling.temperature), int(v.sampling.top_k), float(v.sampling.top_p),
                     float(v.sampling.guidance_scale)),
                    v.preview_every, row_uniforms(v.seed, self.image_len))
               for r, v in zip(rows, values)]
        # One prefill per distinct prompt (a request's candidates share theirs).
        groups: dict[tuple, list[_Row]] = {}
        for row, v in zip(new, values):
            groups.setdefault(tuple(v.text), []).append(row)
        first_slot = len(self.slots)
        for group in groups.values():
            for row in group:
                self.slots.append((row, False))
        leaders = [first_slot + sum(len(g) for g in list(groups.values())[:i]) for i in range(len(groups))]
        dev = self.device
        text = torch.tensor(list(groups), device=dev)  # (G, text_len)
        logits = self.model.prefill(text, self.cache, torch.tensor(leaders, device=dev))  # (G, V)
        cond_first = []
        for g, (leader, group) in enumerate(zip(leaders, groups.values())):
            if len(group) > 1:
                self.cache.copy_rows([leader] * (len(group) - 1), list(range(leader + 1, leader + len(group))))
            cond_first += [logits[g]] * len(group)
        ordered = [row for group in groups.values() for row in group]
        guided_rows = [row for row in ordered if row.guided]
        if guided_rows:
            at = len(self.slots)
            self.slots += [(row, True) for row in guided_rows]
            self.cache.fill(at, at + len(guided_rows), self.uncond_prefix)
        self.rows += ordered
        self._index_rows()
        # Token 0 comes from the prefill logits.
        cond = torch.stack(cond_first)
        uncond = self.uncond_logits.expand_as(cond)
        first = self._sample(ordered, cond, uncond, [0] * len(ordered))
        for row, tok in zip(ordered, first):
            row.tokens.append(tok)
        return {}

    @torch.inference_mode()
    def step(self) -> StepResult:
        result = StepResult()
        live = [row for row in self.rows if len(row.tokens) < self.image_len]
        if live:
            tokens = torch.tensor([row.tokens[-1] for row, _ in self.slots], device=self.device)
            at = [len(row.tokens) - 1 for row, _ in self.slots]
            index = torch.tensor(at, device=self.device)
            logits = self.decoder(tokens, index, max(at)).float()  # (m, V)
            cond, uncond = logits[self._cond_idx], logits[self._uncond_idx]
            picks = self._sample(self.rows, cond, uncond, [len(r.tokens) for r in self.rows])
            for row, tok in zip(self.rows, picks):
                row.tokens.append(tok)
        done = []
        for row in self.rows:
            n = len(row.tokens)
            preview = None
            if row.preview_every and n % row.preview_every == 0 and n < self.image_len:
                preview = self._preview(row)
            result.progress[row.key] = StepProgress(n, self.image_len, preview)
            if n >= self.image_len:
                result.finished[row.key] = SampledCandidate(torch.tensor(row.tokens), row.seed,
                                                            row.candidate_index)
                done.append(row.key)
        if done:
            self.evict(done)
        return result

    @torch.inference_mode()
    def evict(self, keys: list[Hashable]) -> None:
        gone = set(keys)
        n = sum(1 for row, _ in self.slots if row.key not in gone)
        if n == len(self.slots):
            return
        # Keep slots packed in 0..n-1 by moving only the live rows beyond n into the holes
        # below it: a handful of cache rows per eviction, not every row after the first hole.
        holes = [j for j in range(n) if self.slots[j][0].key in gone]
        movers = [j for j in range(n, len(self.slots)) if self.slots[j][0].key not in gone]
        slots = self.slots[:n]
        if movers:
            self.cache.copy_rows(movers, holes)
            for a, b in zip(movers, holes):
                slots[b] = self.slots[a]
        self.slots = slots
        self.rows = [row for row in self.rows if row.key not in gone]
        self._index_rows()

    # -- helpers ---------------------------------------------------------------------------
    def _decoder(self, cache: RowCache):
        """The decode step over `cache`: eager, or compiled/captured over batch-size buckets
        (setting `decode_buckets`, default powers of two up to the cache's slots)."""
        if self.decode_mode == "off":  # eager: each step attends over the cache's live prefix
            return lambda tokens, index, last: self.model.decode_step(tokens, index, cache, last)
        buckets = self.settings.decode_buckets or [2 ** i for i in range(cache.slots.bit_length())]
        return BucketedDecoder(self.model, cache, buckets, self.decode_mode, self.compute)

    def _index_rows(self) -> None:
        """Per-row tensors, rebuilt only when the running batch changes."""
        where = {(id(row), unc): j for j, (row, unc) in enumerate(self.slots)}
        cond = [where[(id(r), False)] for r in self.rows]
        self._cond_idx = torch.tensor(cond, dtype=torch.long, device=self.device)
        self._uncond_idx = torch.tensor([where.get((id(r), True), c) for r, c in zip(self.rows, cond)],
                                        dtype=torch.long, device=self.device)
        self._temp, self._top_k, self._top_p, self._scale, self._uniforms = self._row_params(self.rows)

    def _row_params(self, rows: list[_Row]) -> tuple[torch.Tensor, ...]:
        """Per-row temperature, top_k, top_p, guidance scale and uniforms, where tokens are picked."""
        p = list(zip(*(r.params for r in rows))) or [(), (), (), ()]
        uniforms = (torch.stack([r.uniforms for r in rows]) if rows
                    else torch.zeros(0, self.image_len, dtype=torch.float64))
        return tuple(t.to(self.pick_device) for t in (
            torch.tensor(p[0], dtype=torch.float32), torch.tensor(p[1], dtype=torch.long),
            torch.tensor(p[2], dtype=torch.float32), torch.tensor(p[3], dtype=torch.float32), uniforms))

    def _sample(self, rows: list[_Row], cond: torch.Tensor, uncond: torch.Tensor, at: list[int]) -> list[int]:
        n, dev = len(rows), self.pick_device
        if rows is self.rows:
            temp, top_k, top_p, scale, uni = self._temp, self._top_k, self._top_p, self._scale, self._uniforms
        else:
            temp, top_k, top_p, scale, uni = self._row_params(rows)
        cond, uncond = cond.float().to(dev), uncond.float().to(dev)
        # Unguided rows take the caption's logits as they are, bit for bit.
        logits = torch.where((scale == 1.0)[:, None], cond, guide(cond, uncond, scale))
        u = uni[torch.arange(n, device=dev), torch.tensor(at, device=dev)]
        return sample_tokens(logits, temp, top_k, top_p, u).tolist()

    def _preview(self, row: _Row) -> bytes:
        """The partial grid decoded: unsampled cells repeat the first token (background)."""
        grid = row.tokens + [row.tokens[0]] * (self.image_len - len(row.tokens))
        pixels = self.bundle.dvae.pixels(torch.tensor([grid], device=self.device))
        return to_png(np.ascontiguousarray(pixels[0].cpu().numpy()))


def cache_bytes(model, slots: int, dtype: torch.dtype) -> int:
    """Bytes a cache of `slots` rows takes: a one-row cache's tensors (built on the meta
    device: shapes and dtypes, no memory), times the rows."""
    one = model.new_cache(1, "meta", dtype)
    seen: set[int] = set()

    def walk(x) -> int:
        if isinstance(x, torch.Tensor):
            if id(x) in seen:
                return 0
            seen.add(id(x))
            return x.numel() * x.element_size()
        if isinstance(x, (list, tuple)):
            return sum(walk(v) for v in x)
        if isinstance(x, dict):
            return sum(walk(v) for v in x.values())
        return 0
    return walk(list(vars(one).values())) * slots
