"""Data modules: random training cameras, validation views and the turntable test set."""
from threestudio_like.data import random_camera  # noqa: F401  (registers the data modules)
from threestudio_like.data import image  # noqa: F401,E402  (single-image-datamodule)
