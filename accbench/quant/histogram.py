"""llmc's static histogram calibration of an activation range (`act.calib_algo: static_hist`).

A static, symmetric, per-tensor activation range is chosen from a histogram of the calibration inputs rather
than their min and max, so that rare outliers do not stretch the grid (llmc's BaseQuantizer, itself PyTorch's
HistogramObserver with a finer search step):

1. The inputs arrive one unit at a time: each calibration sequence when the calibration ran as one batch
   (`calib.bs: -1`), else each batch. The first unit's histogram has 2048 bins over its own [min, max]; each later
   unit widens the range to the union, is binned over it, and the histogram so far is re-binned onto the wider
   range (each old bin split into 16 equal parts, each part's count moved to the new bin holding its mid-point).
2. The search (Caffe2's NormMinimization) trims the range bin by bin, from whichever end the quantile bounds
   alpha and beta (moved by `stepsize` = 1e-8 per step; PyTorch uses 1e-5) have crossed more bins of, while the
   L2 error of re-quantizing the histogram onto 2^bits bins (bits: the activation's bit width, 1 + e + m for a
   float format) keeps falling. The range is min + bin_width * start_bin .. min + bin_width * (end_bin + 1).

The activation's scale then follows from the range as usual (symmetric: max(|lo|, |hi|) / qmax).
"""

from __future__ import annotations

import numpy as np
import torch

BINS, UPSAMPLE, STEPSIZE = 2048, 16, 1e-8


class HistogramRange:
    """The running histogram of one linear's calibration inputs; `add` one unit at a time, then `range`."""

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        self.hist: torch.Tensor | None = None
        self.lo = self.hi = torch.tensor(0.0)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float().cpu()
        x_min, x_max = x.min(), x.max()
        if self.hist is None:
            self.hist, self.lo, self.hi = torch.histc(x, self.bins, min=x_min.item(), max=x_max.item()), x_min, x_max
            return
        new_lo, new_hi = torch.minimum(self.lo, x_min), torch.maximum(self.hi, x_max)
        update = torch.histc(x, self.bins, min=new_lo.item(), max=new_hi.item())
        if new_lo == self.lo and new_hi == self.hi:
            self.hist = self.hist + update
        elif self.lo == self.hi:  # llmc weights the old single-value histogram by the update's count
            self.hist = update + torch.histc(self.lo, self.bins, min=new_lo.item(), max=new_hi.item()) * update.sum()
        else:
            self.hist = update + self._rebin(new_lo, new_hi)
        self.lo, self.hi = new_lo, new_hi

    def _rebin(self, new_lo: torch.Tensor, new_hi: torch.Tensor) -> torch.Tensor:
        """The histogram so far on the bins of [new_lo, new_hi]: each bin split in UPSAMPLE parts, each part's
        count moved to the new bin holding its mid-point."""
        assert self.hist is not None
        fine = self.hist.repeat_interleave(UPSAMPLE) / UPSAMPLE
        width = (self.hi - self.lo) / (self.bins * UPSAMPLE)
        mids = torch.linspace(self.lo, self.hi, self.bins * UPSAMPLE + 1)[:-1] + 0.5 * width
        edges = torch.linspace(new_lo, new_hi, self.bins + 1)
        idx = (torch.bucketize(mids, edges, right=True) - 1).clamp(0, self.bins - 1)
        return torch.bincount(idx, weights=fine, minlength=self.bins)

    def range(self, dst_bits: int, stepsize: float = STEPSIZE) -> tuple[torch.Tensor, torch.Tensor]:
        """The (lo, hi) the norm-minimising search keeps, for a grid of 2^dst_bits values."""
        if self.hist is None:
            raise ValueError("no calibration input reached this layer")
        start, end = search_bins(self.hist, self.lo.item(), self.hi.item(), 2**dst_bits, stepsize)
        width = (self.hi - self.lo) / self.bins
        return self.lo + width * start, self.lo + width * (end + 1)


def _l2_error(hist: torch.Tensor, lo: float, hi: float, start: int, end: int, dst_nbins: int) -> float:
    """L2 error of representing the histogram by `dst_nbins` uniform bins over bins start..end (values in each
    source bin taken as uniformly spread; outside the kept range clamped to the nearest end bin)."""
    bins = hist.shape[0]
    width = (hi - lo) / bins
    dst_width = width * (end - start + 1) / dst_nbins
    if dst_width == 0.0:
        return 0.0
    src_begin = (torch.arange(bins) - start) * width
    src_end = src_begin + width
    dst_of_begin = torch.clamp(torch.div(src_begin, dst_width, rounding_mode="floor"), 0, dst_nbins - 1)
    dst_of_end = torch.clamp(torch.div(src_end, dst_width, rounding_mode="floor"), 0, dst_nbins - 1)
    density = hist / width

    def cube_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # density * integral_a^b x^2 dx
        return density * (b * b * b - a * a * a) / 3

    half = torch.tensor(dst_width / 2)
    norm = cube_norm(src_begin - (dst_of_begin + 0.5) * dst_width, torch.ones(bins) * (dst_width / 2))
    norm = norm + (dst_of_end - dst_of_begin - 1) * cube_norm(-half, half)
    norm = norm + cube_norm(torch.tensor(-dst_width / 2), src_end - (dst_of_end * dst_width + dst_width / 2))
    return norm.sum().item()


def search_bins(hist: torch.Tensor, lo: float, hi: float, dst_nbins: int, stepsize: float = STEPSIZE) -> tuple[int, int]:
    """(start_bin, end_bin) of the norm-minimising range (see the module docstring). The quantile comparisons are
    made in float32, as the reference makes them on its float32 cumulative sum."""
    bins = hist.shape[0]
    total = torch.sum(hist).item()
    csum = torch.cumsum(hist, dim=0).numpy()
    f32 = np.float32
    alpha, beta = 0.0, 1.0
    start, end = 0, bins - 1
    norm_min = float("inf")
    while alpha < beta:
        next_alpha, next_beta = alpha + stepsize, beta - stepsize
        left, right = start, end
        a_lim, b_lim = f32(next_alpha * total), f32(next_beta * total)
        while left < end and csum[left] < a_lim:
            left += 1
        while right > start and csum[right] > b_lim:
            right -= 1
        next_start, next_end = start, end
        if left - start > end - right:
            next_start, alpha = left, next_alpha
        else:
            next_end, beta = right, next_beta
        if next_start == start and next_end == end:
            continue
        norm = _l2_error(hist, lo, hi, next_start, next_end, dst_nbins)
        if norm > norm_min:
            break
        norm_min, start, end = norm, next_start, next_end
    return start, end
