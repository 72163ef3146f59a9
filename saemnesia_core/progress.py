"""One progress bar over a run of two phases with very different costs (sampling N prompts,
then S training steps), weighted by time rather than by counting items: 36 prompts and 2000
steps must not show the collection as 2% of the run when it takes half of it.

The time of each phase is estimated from what has been measured so far (seconds per prompt,
seconds per step) and from a guess for the phase not yet started; the fraction never goes back.
"""
from __future__ import annotations

import time

import torch


def guess_step_seconds(d_in: int, n_latents: int, batch: int, probe_rows: int = 512) -> float:
    """Seconds per SAE training step on this machine, from one timed encoder product on a
    slice of the batch (a step costs about three such products over the whole batch: the
    encoder, its gradient and the decoder's, plus selection)."""
    rows = max(1, min(batch, probe_rows))
    x = torch.randn(rows, d_in)
    w = torch.randn(n_latents, d_in)
    x @ w.t()  # warm-up (allocations, thread pool)
    t = time.perf_counter()
    x @ w.t()
    return 4.0 * (time.perf_counter() - t) * batch / rows


class TimeWeightedProgress:
    def __init__(self, jobs: int, steps: int, step_seconds_guess: float, clock=time.perf_counter):
        self.jobs, self.steps = max(1, jobs), max(1, steps)
        self.step_guess = max(step_seconds_guess, 1e-6)
        self.clock = clock
        self.t0 = clock()
        self.collect_seconds = None  # measured, once collection is over
        self.train_t0 = None
        self.train_from = 0  # the step training (re)started at: a resume measures only new steps
        self.fraction = 0.0
        self.text = ""

    def _advance(self, f: float, text: str) -> tuple[float, str]:
        self.fraction = min(1.0, max(self.fraction, f))
        self.text = text
        return self.fraction, text

    def collected(self, done: int, total: int | None = None) -> tuple[float, str]:
        total = total or self.jobs
        per_job = (self.clock() - self.t0) / max(done, 1)
        collect = per_job * self.jobs
        f = per_job * done / (collect + self.steps * self.step_guess) if done else 0.0
        return self._advance(f, f"collecting {done}/{total}")

    def reused_collection(self) -> tuple[float, str]:
        self.collect_seconds = 0.0  # nothing left to do in that phase
        return self._advance(0.0, "collection reused: resuming training")

    def trained(self, step: int, total: int | None = None) -> tuple[float, str]:
        total = total or self.steps
        now = self.clock()
        if self.collect_seconds is None:
            self.collect_seconds = now - self.t0
        if self.train_t0 is None:
            self.train_t0, self.train_from = now, step - 1 if step > 0 else 0
        done_new = step - self.train_from
        per_step = (now - self.train_t0) / done_new if done_new > 2 else self.step_guess
        left = (total - step) * per_step
        spent = self.collect_seconds + (now - self.train_t0) + self.train_from * per_step
        return self._advance(spent / max(spent + left, 1e-9), f"training step {step}/{total}")
