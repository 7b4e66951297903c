"""Module and Parameter: the containers that hold a network's weights (ARCHITECTURE.md s. 1).

A Module finds its Parameters and child Modules by attribute (in assignment order), and its
buffers (BN running statistics: arrays that are state but not trained) by the names given to
``register_buffer``. Names join with dots: ``aspp.project.bn.running_mean``.
"""
import numpy as np

from ..device import get_device
from ..tensor import Tensor, _device_of


class Parameter(Tensor):
    """A Tensor that a Module trains: ``requires_grad`` starts True; code that fixes a
    parameter sets it False (``experiment.freeze_batch_norm``: frozen BN's gamma and beta)."""

    def __init__(self, data, device=None):
        super().__init__(data, requires_grad=True, device=device)


class Module:
    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__}.forward is abstract")

    # -- what a module holds --------------------------------------------------------------------
    def register_buffer(self, name, array):
        self.__dict__.setdefault("_buffer_names", []).append(name)
        setattr(self, name, array)

    def named_children(self):
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def children(self):
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}{name}.")

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_parameters(self):
        for prefix, m in self.named_modules():
            for k, v in vars(m).items():
                if isinstance(v, Parameter):
                    yield prefix + k, v

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        for prefix, m in self.named_modules():
            for k in m.__dict__.get("_buffer_names", ()):
                yield prefix + k, m, k

    # -- modes and devices ----------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (BN uses batch statistics, dropout is on); returns self."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move (and/or cast) every parameter and buffer in place; the Parameter objects stay the
        same, so an optimizer built earlier still holds them. Returns self."""
        for _, p in self.named_parameters():
            dev = get_device(device) if device is not None else p.device
            p.data = dev.asarray(p.data, dtype=dtype)
            p.grad = None if p.grad is None else dev.asarray(p.grad, dtype=dtype)
            p.device = dev
        for _, m, k in self.named_buffers():
            dev = get_device(device if device is not None else _device_of(getattr(m, k)))
            setattr(m, k, dev.asarray(getattr(m, k), dtype=dtype))
        return self

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self):
        """name -> NumPy copy of every parameter and buffer."""
        cpu = get_device("cpu")
        state = {k: np.array(cpu.asarray(p.data)) for k, p in self.named_parameters()}
        state.update({k: np.array(cpu.asarray(getattr(m, b))) for k, m, b in self.named_buffers()})
        return state

    def load_state_dict(self, state):
        """Copy ``state`` (as from ``state_dict()``) into the parameters and buffers in place;
        ValueError on a missing or unexpected name or a shape mismatch, before changing anything."""
        targets = {k: (p, "data") for k, p in self.named_parameters()}
        targets.update({k: (m, b) for k, m, b in self.named_buffers()})
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        for k, (obj, attr) in targets.items():
            have, got = getattr(obj, attr).shape, np.shape(state[k])
            if have != got:
                raise ValueError(f"load_state_dict: {k} has shape {have} in the model but {got} "
                                 "in the state dict")
        for k, (obj, attr) in targets.items():
            target = getattr(obj, attr)
            target[...] = get_device(_device_of(target)).asarray(state[k])


class Sequential(Module):
    """Children named 0, 1, 2, ... applied in order."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __iter__(self):
        return iter(self.children())

    def __len__(self):
        return len(self.children())

    def __getitem__(self, i):
        return self.children()[i]

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x
