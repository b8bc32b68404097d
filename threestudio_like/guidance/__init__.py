"""Guidances (frozen priors) and the shared distillation machinery.

* :mod:`.distillation` — the math of every update rule (SDS, x0 reconstruction, SJC, CFG,
  Perp-Neg, exact posterior means), written once.
* :mod:`.base` — :class:`~.base.BaseGuidance`: timestep schedule, the update-rule dispatch and
  the typed call ``guidance(rgb, condition, cameras)``.
* :mod:`.latent_diffusion` — the base of Stable-Diffusion-family priors: weights through the one
  loader, VAE encode/decode, one batched classifier-free-guidance UNet call, DDIM sampling.
* one module per prior (``mvdream``, ``stable_diffusion``, ``zero123``, ``eschernet``,
  ``zero123pp`` (+ ``zero123pp_guidance``), ``reference_object``); the registry finds every module here, so a new prior is one file plus
  one YAML.
"""
