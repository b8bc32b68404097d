"""Model weights: finding them (:mod:`.hub`), reading files safely (:mod:`.checkpoints`,
:mod:`.safe_pickle`), converting original checkpoints (:mod:`.ldm_convert`, :mod:`.clip_convert`),
building models (:mod:`.builders`, :mod:`.tiny`) and the one loader every prior uses
(:mod:`.loader`)."""
