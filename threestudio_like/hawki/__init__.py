"""HawkI aerial-view synthesis (``configs/hawki-aerial.yaml``, ``--sample``).

* :mod:`.ipm` — HawkI's homography pseudo-aerial image, in torch;
* :mod:`.mutual_info` — differentiable normalised mutual information and the MI guidance step;
* :mod:`.personalise` — the embedding and LoRA stages, with their safetensors cache;
* :mod:`.sources` — the registry of guidance-image sources (ipm, zero123, zero123pp);
* :mod:`.pipeline` — the whole run: stages, MI-guided DDIM, the saved images and sheet.

The settings are the ``hawki-guidance`` config (:mod:`threestudio_like.guidance.hawki`).
"""
