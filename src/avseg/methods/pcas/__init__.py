"""PCAS (Li, Huang, Jian, Zhou, ICASSP 2026): weakly supervised audio-visual *semantic* segmentation.

Video-level labels in, per-frame semantic masks of the sounding objects out (binary S4/MS3 masks = the
union of the foreground classes). Stages (each writes named artifacts in the run folder):

1. ``look-listen``: Looking-before-Listening + the contrastive half of Listening-before-Segmentation.
   Visual encoder (timm ViT, or a CNN with an attention-pooling class token) gives per frame v_cls, v_sem
   (mean of patch tokens) and v_th (patch tokens); the AST-style audio encoder reads the clip with temporal
   visual prompts (TVP) and gives a_sem_t. Losses: multi-label BCE of heads on a_sem_t, v_cls_t, v_sem_t
   against the video labels; CMC, CMPC and CMCC (each switchable). Also writes the audio classification
   score on the test split (the paper's Table 3 shape): ``look-listen/audio_classification.json``.
2. ``pseudo-labels``: class activation maps (classifier weights on patch tokens) restricted to the classes
   the audio head says sound in frame t (within the video labels), background / ignore thresholds ->
   class-index PNGs in ``pseudo/labels`` (255 = ignore), a contact sheet and their quality against the
   ground truth of the training frames that have it.
3. ``segment``: the segmentation head trained with CE (ignore index) on the pseudo labels, jointly with
   the look-listen losses by default (ToCo-style weights: patch 0.2, class token 0.5, segmentation 0.1).

Inference: segmentation head -> softmax over C = K + 1 classes, gated by the audio head's per-frame
class probabilities (a class that does not sound in frame t goes to background), optional dense CRF.
Where the paper is silent the choice is ours, documented in docs/pcas.md and exposed in ``PCASConfig``.
"""

from __future__ import annotations

from avseg.methods.pcas.stages import SPEC

__all__ = ["SPEC"]
