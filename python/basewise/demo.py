"""The bundled default: a tiny CNN that recognises a GATA-like motif, and a sequence holding it.

The model (:class:`MotifCNN`, 737 parameters, weights in ``basewise/data/demo_model.pt``)
was trained by ``scripts/train_demo_model.py`` in a few seconds on the CPU to tell random
background sequence from sequence with the motif ``AGATAAGG`` planted in it. Its output is the
logit of "motif present", shaped (B, 1, 1) like a one-task gReLU model. The example sequence
(``basewise/data/demo_sequence.txt``, 200 bp) holds one copy of the motif; ISM on it shows the
motif's bases as the only large effects.

Example:
    >>> from basewise.demo import load_demo_model, load_demo_sequence
    >>> model = load_demo_model()
    >>> seq, motif_start, motif = load_demo_sequence()
    >>> seq[motif_start:motif_start + len(motif)] == motif
    True
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["MotifCNN", "load_demo_model", "load_demo_sequence", "run_demo", "MOTIF"]

MOTIF = "AGATAAGG"


class MotifCNN(torch.nn.Module):
    """Conv(4->16, k=11) -> ReLU -> max over length -> Linear(16->1); output (B, 1, 1) logits.

    Args:
        channels: number of convolution filters. Default 16.
        kernel_size: filter width. Default 11.
    """

    def __init__(self, channels: int = 16, kernel_size: int = 11):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, channels, kernel_size, padding="same")
        self.dense = torch.nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, L)
        h = torch.relu(self.conv(x))  # (B, C, L)
        h = h.amax(dim=-1)  # (B, C)
        return self.dense(h)[:, :, None]  # (B, 1, 1)


def _data(name: str):
    return resources.files("basewise").joinpath("data", name)


def load_demo_model() -> MotifCNN:
    """The trained demo model, in eval mode on the CPU.

    Example:
        >>> load_demo_model()(torch.zeros(1, 4, 50)).shape
        torch.Size([1, 1, 1])
    """
    model = MotifCNN()
    with _data("demo_model.pt").open("rb") as fh:
        model.load_state_dict(torch.load(fh, map_location="cpu", weights_only=True))
    return model.eval()


def load_demo_sequence() -> Tuple[str, int, str]:
    """The example sequence, the 0-based start of its planted motif, and the motif.

    Example:
        >>> len(load_demo_sequence()[0])
        200
    """
    meta = json.loads(_data("demo_sequence.json").read_text())
    return meta["sequence"], int(meta["motif_start"]), meta["motif"]


def run_demo(top: int = 10, file=None, batch_size: int = 64, progress: Optional[bool] = None) -> "object":
    """Run ISM on the bundled sequence with the bundled model and print a readable summary.

    Args:
        top: number of positions listed, largest mean effect first. Default 10.
        file: where to print; None means ``sys.stdout``. Default None.
        batch_size: ISM batch size. Default 64.
        progress: ISM progress bar (see :func:`basewise.ISM_predict`). Default None.

    Returns:
        The ISM DataFrame (4, 200) of log-odds changes (``compare_func="subtract"``).

    Example:
        >>> import io
        >>> df = run_demo(file=io.StringIO())
        >>> df.shape
        (4, 200)
    """
    import sys

    from .ism import ISM_predict

    out = sys.stdout if file is None else file
    model = load_demo_model()
    seq, motif_start, motif = load_demo_sequence()
    df = ISM_predict(seq, model, compare_func="subtract", batch_size=batch_size, progress=progress)
    effects = df.values  # (4, L): change of the motif logit for each substitution
    with torch.no_grad():
        logit = float(model(torch.from_numpy(_onehot(seq))[None]).item())
    score = np.abs(effects).mean(axis=0) * 4 / 3  # mean |effect| over the 3 real substitutions
    order = np.argsort(-score)[:top]
    motif_pos = set(range(motif_start, motif_start + len(motif)))
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("basewise demo: saturation ISM of the bundled 200 bp sequence with the bundled motif CNN")
    p(f"model: {sum(q.numel() for q in model.parameters())} parameters, output = logit(motif present) = {logit:.2f}")
    p(f"planted motif {motif} at positions {motif_start}-{motif_start + len(motif) - 1}")
    p(f"ISM: {3 * len(seq)} substitutions + 1 reference, effect = mutant logit - reference logit")
    p("")
    p(" pos  ref   mean|effect|   A       C       G       T      ")
    width = 24
    scale = score.max() if score.max() > 0 else 1.0
    for i in order:
        bar = "#" * max(1, int(round(width * score[i] / scale)))
        vals = "  ".join(f"{effects[a, i]:+6.2f}" for a in range(4))
        mark = "  <- motif" if i in motif_pos else ""
        p(f"{i:4d}   {seq[i]}    {score[i]:7.3f}    {vals}  {bar}{mark}")
    n = min(top, len(motif))
    hits = sum(int(i in motif_pos) for i in order[:n])
    p("")
    p(f"{hits} of the {n} largest effects fall inside the planted motif; the median position "
      f"outside it has mean |effect| {np.median(np.delete(score, sorted(motif_pos))):.3f}.")
    return df


def _onehot(seq: str) -> np.ndarray:
    from .sequence import to_onehot

    return to_onehot(seq)[0].numpy()
