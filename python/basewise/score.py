"""Drop-in for ``grelu.interpret.score``: ``import basewise.score as score``.

Example:
    >>> import basewise.score as score
    >>> sorted(n for n in dir(score) if not n.startswith("_"))
    ['ISM_predict', 'get_attention_scores', 'get_attributions']
"""

from .attention import get_attention_scores
from .attribution import get_attributions
from .ism import ISM_predict

__all__ = ["ISM_predict", "get_attributions", "get_attention_scores"]
