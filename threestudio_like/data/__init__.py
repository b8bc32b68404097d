"""Data modules: random training cameras, validation views and the turntable test set
(:mod:`.random_camera`); posed input images (:mod:`.image`, with :mod:`.image_io` and
:mod:`.references`)."""
from threestudio_like.data import random_camera  # noqa: F401  (registers the data modules)
from threestudio_like.data import image  # noqa: F401,E402  (single-image-datamodule)
