"""The reference object with a known answer (:mod:`.object`) and the prior modes that reproduce
the Janus problem and its cures on it (:mod:`.modes`); used by the reference-object prior and
the Janus lab."""
