"""A mocked multi-device placement for machines without several GPUs.

:class:`FakeDevices` is a torch function mode in which tensors can be "placed" on ``cuda:K``
labels while their data stays on the CPU: ``.to("cuda:1")``, ``device=`` arguments of
factories and ``.cpu()`` set a tensor's label, ``.device`` reads it, and an operation whose
placed inputs carry two different labels raises as torch does across devices. Unplaced tensors
(made without a device) take part in anything, as CPU index tensors and scalars do on a GPU.

It checks where code moves tensors, not what a GPU computes: a hook that forgets to move its
value to the hooked activation's device fails here as it would on two GPUs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode


def _device_arg(value: Any) -> torch.device | None:
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError:
            return None
    return None


_DEVICE_GETTER = torch.Tensor.device.__get__  # a new method-wrapper on each access: compare with ==


class FakeDevices(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.moves = 0  # cross-label moves done through .to()

    def place(self, tensor: torch.Tensor, device: str) -> torch.Tensor:
        tensor._fake_device = torch.device(device)
        return tensor

    def device_of(self, tensor: torch.Tensor) -> torch.device:
        return getattr(tensor, "_fake_device", torch.device("cpu"))

    def _labels(self, values: Any) -> set[torch.device]:
        found: set[torch.device] = set()
        for value in values:
            if isinstance(value, (list, tuple)):
                found |= self._labels(value)
            elif isinstance(value, torch.Tensor) and hasattr(value, "_fake_device") and value.dim() > 0:
                found.add(value._fake_device)
        return found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func == _DEVICE_GETTER:
            return self.device_of(args[0])
        target = _device_arg(kwargs.pop("device", None))
        if func is torch.Tensor.to:
            rest = []
            for value in args[1:]:
                device = _device_arg(value)
                if device is not None:
                    target = device
                else:
                    rest.append(value)
            if target is not None and target != self.device_of(args[0]):
                self.moves += 1
                kwargs["copy"] = True  # a move makes a new tensor, as between real devices
            args = (args[0], *rest)
        elif func is torch.Tensor.cpu:
            target = torch.device("cpu")
        labels = self._labels(list(args) + list(kwargs.values()))
        if len(labels) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{' and '.join(sorted(map(str, labels)))}! ({getattr(func, '__name__', func)})")
        out = func(*args, **kwargs)
        label = target or (labels.pop() if labels else None)
        if label is not None:
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor):
                    tensor._fake_device = label
        return out
