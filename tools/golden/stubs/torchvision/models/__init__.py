"""Stub models: importable names that raise when called (no weights are ever needed)."""

from torchvision.models import inception  # noqa: F401


def _unavailable(name):
  def build(*args, **kwargs):
    raise RuntimeError(f"torchvision.models.{name} is a stub; real torchvision is not installed.")

  build.__name__ = name
  return build


vgg16 = _unavailable("vgg16")
vgg19 = _unavailable("vgg19")
alexnet = _unavailable("alexnet")
squeezenet1_1 = _unavailable("squeezenet1_1")
inception_v3 = _unavailable("inception_v3")
