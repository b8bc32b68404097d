"""``python launch.py --config <recipe> --sample ...``: images straight from a recipe's prior.

:mod:`.run` builds the condition (a prompt through the recipe's prompt processor, or the posed
input images through its data module: guidances never open files), resolves the settings of the
recipe's ``sample:`` section against the prior's defaults and saves the grid; :mod:`.ddim` is the
sampling loop the priors share.
"""
