"""Stub Inception blocks: base classes that piq subclasses at import time."""

import torch


class _Stub(torch.nn.Module):
  def __init__(self, *args, **kwargs):
    raise RuntimeError(f"{type(self).__name__} is a torchvision stub; it cannot be built.")


class InceptionA(_Stub):
  pass


class InceptionC(_Stub):
  pass


class InceptionE(_Stub):
  pass
