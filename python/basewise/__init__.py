"""basewise: fast, exact in-silico mutagenesis, attributions and attention maps for DNA models.

A drop-in replacement for gReLU's ``grelu.interpret.score``: ``import basewise.score as score``
or call the functions from here. Plots live in :mod:`basewise.plot` (optional extra
``basewise[plot]``), on-disk results in :mod:`basewise.results`, TF-MoDISco export in
:mod:`basewise.modisco`, the native ops in :mod:`basewise.ops`.

Example:
    >>> import torch, basewise
    >>> model = torch.nn.Sequential(torch.nn.Conv1d(4, 1, 3), torch.nn.AdaptiveAvgPool1d(1))
    >>> basewise.ISM_predict(["ACGTAC", "GGTTAA"], model, return_df=False).shape
    (2, 6, 4, 1, 1)
"""

import torch  # noqa: F401  (import torch before the extension: one shared OpenMP runtime)

from .attention import AttentionNotFoundError, get_attention_scores, list_attention_blocks
from .attribution import TargetError, get_attributions
from .incremental import IsmPlan, ism_plan_report, plan_ism
from .ism import ISM_predict
from .modisco import export_modisco
from .ops import build_info
from .results import ResultsWriter, open_results
from .sequence import IntervalError, SequenceInputError, to_indices, to_onehot
from .summarize import export_bigwig, position_scores, region_summary, to_bedgraph, top_positions
from .transforms import Aggregate

__version__ = "0.1.0"

__all__ = [
    "ISM_predict",
    "get_attributions",
    "get_attention_scores",
    "list_attention_blocks",
    "AttentionNotFoundError",
    "TargetError",
    "SequenceInputError",
    "IntervalError",
    "plan_ism",
    "IsmPlan",
    "ism_plan_report",
    "Aggregate",
    "to_indices",
    "to_onehot",
    "open_results",
    "ResultsWriter",
    "export_modisco",
    # after the run: per-position scores and summaries of a results file (basewise.summarize)
    "position_scores",
    "region_summary",
    "top_positions",
    "to_bedgraph",
    "export_bigwig",
    "build_info",
    "__version__",
]
