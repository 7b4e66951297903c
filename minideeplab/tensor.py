"""Tensor: an array on a device plus the graph that made it (ARCHITECTURE.md section 4).

``backward()`` visits the creators in reverse topological order (highest generation first, so a
tensor's gradient is complete before its creator runs), accumulates ``.grad`` on the leaves that
require it, and frees the graph. Gradients are plain arrays on the tensor's device.
"""
import heapq
import itertools

import numpy as np

from .device import get_device


def _device_of(array):
    return "cuda" if type(array).__module__.startswith("cupy") else "cpu"


class Tensor:
    # NumPy defers to Tensor's reflected operators (ndarray + Tensor -> Tensor.__radd__).
    __array_priority__ = 200

    def __init__(self, data, requires_grad=False, device=None, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self.device = get_device(device if device is not None else _device_of(data))
        self.data = self.device.asarray(data, dtype=dtype)
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.creator = None
        self.generation = 0
        self.output_index = 0  # which output of its creator this is

    # -- array facts ---------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    dtype = property(lambda self: self.data.dtype)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.numpy()!r}, device={self.device.name!r}{grad})"

    def numpy(self):
        """The data as a NumPy array, whatever the device."""
        return get_device("cpu").asarray(self.data)

    def item(self):
        return self.numpy().item()

    def to(self, device):
        """A copy on ``device`` (a new leaf with the same ``requires_grad``)."""
        return Tensor(self.data, requires_grad=self.requires_grad, device=device)

    def detach(self):
        return Tensor(self.data, device=self.device)

    # -- autograd ------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) . grad into every leaf's ``.grad``; ``grad`` defaults to 1
        for a scalar."""
        if not self.requires_grad:
            raise ValueError("backward() on a tensor that does not require grad")
        xp = self.device.xp
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() of a non-scalar tensor of shape {self.shape} needs "
                                 "a gradient of that shape (e.g. loss.sum().backward())")
            grad = xp.ones_like(self.data)
        else:
            grad = self.device.asarray(grad.data if isinstance(grad, Tensor) else grad,
                                       dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): gradient of shape {grad.shape} for a tensor of "
                                 f"shape {self.shape}")
        if self.creator is None:
            self._accumulate(grad)
            return
        # Gradients by (creator, output index): the graph holds no Tensors, so no arrays but
        # those its Functions saved (ARCHITECTURE.md s. 4).
        grads = {(self.creator, self.output_index): grad}
        order = itertools.count()  # tie-breaker: heapq never compares Functions
        heap = [(-self.creator.generation, next(order), self.creator)]
        queued = {self.creator}
        while heap:
            f = heapq.heappop(heap)[2]
            if f.inputs is None:
                raise ValueError("backward() through a graph already freed by an earlier "
                                 "backward(); pass retain_graph=True to the first call")
            gxs = f.backward(*[grads.pop((f, i), None) for i in range(f.n_outputs)])
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for edge, gx in zip(f.inputs, gxs):
                if gx is None or edge is None:
                    continue
                if isinstance(edge, Tensor):
                    edge._accumulate(gx)
                    continue
                grads[edge] = gx if edge not in grads else grads[edge] + gx
                if edge[0] not in queued:
                    queued.add(edge[0])
                    heapq.heappush(heap, (-edge[0].generation, next(order), edge[0]))
            if not retain_graph:
                f.release()  # the edges, and on a kernel device the saved arrays, as we go

    def _accumulate(self, gx):
        if gx.shape != self.shape:
            raise ValueError(f"internal: gradient of shape {gx.shape} for shape {self.shape}")
        # Never in place: the same gradient array may be handed to several tensors.
        self.grad = gx if self.grad is None else self.grad + gx

    # -- operators (defined in functional.basic) -----------------------------------------------
    def __add__(self, other): return F.add(self, other)
    def __radd__(self, other): return F.add(other, self)
    def __sub__(self, other): return F.sub(self, other)
    def __rsub__(self, other): return F.sub(other, self)
    def __mul__(self, other): return F.mul(self, other)
    def __rmul__(self, other): return F.mul(other, self)
    def __truediv__(self, other): return F.div(self, other)
    def __rtruediv__(self, other): return F.div(other, self)
    def __neg__(self): return F.neg(self)
    def __pow__(self, c): return F.pow(self, c)
    def __matmul__(self, other): return F.matmul(self, other)
    def __rmatmul__(self, other): return F.matmul(other, self)
    def __getitem__(self, key): return F.getitem(self, key)

    def reshape(self, *shape):
        return F.reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes):
        return F.transpose(self, axes[0] if len(axes) == 1 else (axes or None))

    @property
    def T(self):
        return F.transpose(self)

    def sum(self, axis=None, keepdims=False):
        return F.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return F.mean(self, axis, keepdims)


def as_tensor(x, device, like=None):
    """``x`` as a Tensor on ``device``; Python numbers take ``like``'s dtype (x + 1 stays
    float32)."""
    if isinstance(x, Tensor):
        return x
    if np.isscalar(x) and like is not None:
        return Tensor(np.asarray(x, dtype=like.dtype), device=device)
    return Tensor(x, device=device)


from . import functional as F  # noqa: E402  (the operators above need the op table)
