"""Numbers the AlignMamba paper reports (Li et al., CVPR 2025), for reference rows in reports.

They are published numbers, never measured here: reports show them in their own rows, marked
"reported in the paper", and never average or rank them with measured ones. The paper gives
Acc-2 / F1 in percent without naming MMSA's Has0 / Non0 convention, so they are shown beside
either Acc-2 metric with that caveat.
"""
from __future__ import annotations

__all__ = ["REPORTED_COMPLETE", "REPORTED_MISSING", "REPORTED_NOTE"]

REPORTED_NOTE = ("reported in the paper (Acc-2 / F1 %, the paper does not say whether Acc-2 counts "
                 "neutral samples as positive, MMSA's Has0, or leaves them out, Non0); not measured here")

# Table 3: complete modalities, variant -> dataset -> (Acc-2, F1).
REPORTED_COMPLETE: dict[str, dict[str, tuple[float, float]]] = {
    "alignmamba": {"mosi": (86.9, 86.9), "mosei": (86.6, 86.5)},
    "wo_local_ot": {"mosi": (84.6, 84.4), "mosei": (84.1, 84.0)},
    "wo_global_mmd": {"mosi": (85.8, 85.7), "mosei": (85.7, 85.5)},
    "single_stream": {"mosi": (82.3, 82.1), "mosei": (81.8, 81.4)},
    "multi_stream": {"mosi": (83.7, 83.5), "mosei": (83.5, 83.2)},
    "wo_audio": {"mosi": (84.4, 84.6), "mosei": (83.9, 83.5)},
    "wo_video": {"mosi": (83.7, 83.8), "mosei": (83.3, 82.8)},
    "wo_language": {"mosi": (65.3, 63.4), "mosei": (64.6, 62.2)},
}

# Table 1: AlignMamba under missing modalities (IMDer's protocol), dataset -> rate -> (Acc-2, F1).
REPORTED_MISSING: dict[str, dict[float, tuple[float, float]]] = {
    "mosi": {0.1: (85.7, 85.6), 0.2: (84.3, 84.1), 0.3: (82.2, 82.2), 0.4: (80.0, 79.6), 0.5: (77.6, 77.3),
             0.6: (75.8, 75.1), 0.7: (73.8, 73.2)},
    "mosei": {0.1: (85.4, 85.4), 0.2: (83.6, 83.3), 0.3: (82.5, 81.0), 0.4: (81.7, 80.5), 0.5: (80.1, 78.7),
              0.6: (79.4, 78.2), 0.7: (78.8, 76.9)},
}
