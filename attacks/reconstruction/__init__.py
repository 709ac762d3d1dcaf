"""Data reconstruction (gradient inversion) attacks: what a server can recover from what it observes.

Every attack receives only a :class:`ServerView` (the model the server sent and the
gradient, update or secure aggregate it received) and returns a :class:`Reconstruction`;
the ground truth goes only to :mod:`attacks.reconstruction.metrics`.

Examples
--------
>>> import torch
>>> from attacks.reconstruction import SigmoidLeNet, idlg_label, observe_gradient
>>> g = torch.Generator().manual_seed(1)
>>> m = SigmoidLeNet(input_shape=(1, 8, 8), num_classes=10, generator=g)
>>> idlg_label(observe_gradient(m, torch.randn(1, 1, 8, 8, generator=g), torch.tensor([5])))
5
"""

from attacks.reconstruction.dlg import DLG
from attacks.reconstruction.errors import MissingLayerError, UnsupportedBatchError, ViewMismatchError
from attacks.reconstruction.idlg import IDLG, final_linear_name, idlg_label
from attacks.reconstruction.imprint import (
    ImprintAttack,
    ImprintBlock,
    ImprintedModel,
    brightness_thresholds,
    plant_imprint,
)
from attacks.reconstruction.inverting import InvertingFedAvg, InvertingGradients
from attacks.reconstruction.loki import LokiAttack, client_block, plant_loki
from attacks.reconstruction.metrics import (
    TokenScores,
    best_match_psnr,
    label_accuracy,
    psnr,
    rouge_n,
    ssim,
    token_scores,
)
from attacks.reconstruction.models import SigmoidLeNet
from attacks.reconstruction.registry import (
    RECONSTRUCTION_ATTACKS,
    build_reconstruction_attack,
    reconstruction_attack_descriptions,
)
from attacks.reconstruction.result import Reconstruction
from attacks.reconstruction.text import (
    TAG,
    MiniLMClassifier,
    embedding_name,
    load_minilm,
    minilm_path,
    observe_text_gradient,
    recover_token_set,
)
from attacks.reconstruction.view import ServerView, observe_gradient, observe_update

__all__ = [
    "DLG",
    "IDLG",
    "RECONSTRUCTION_ATTACKS",
    "TAG",
    "ImprintAttack",
    "ImprintBlock",
    "ImprintedModel",
    "InvertingFedAvg",
    "InvertingGradients",
    "LokiAttack",
    "MiniLMClassifier",
    "MissingLayerError",
    "Reconstruction",
    "ServerView",
    "SigmoidLeNet",
    "TokenScores",
    "UnsupportedBatchError",
    "ViewMismatchError",
    "best_match_psnr",
    "brightness_thresholds",
    "build_reconstruction_attack",
    "client_block",
    "embedding_name",
    "final_linear_name",
    "idlg_label",
    "label_accuracy",
    "load_minilm",
    "minilm_path",
    "observe_gradient",
    "observe_text_gradient",
    "observe_update",
    "plant_imprint",
    "plant_loki",
    "psnr",
    "reconstruction_attack_descriptions",
    "recover_token_set",
    "rouge_n",
    "ssim",
    "token_scores",
]
