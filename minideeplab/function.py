"""Function: one differentiable op, DeZero-style (ARCHITECTURE.md section 4).

Subclasses implement ``forward(*arrays) -> array or tuple`` and ``backward(*grads) -> grads``
(one per input, ``None`` where an input takes no gradient). ``self.dev`` is the device the inputs
live on, so the op picks its NumPy or kernel path; ``self.needs_grad[i]`` tells backward which
input gradients are wanted.
"""
import weakref

from . import config


class Function:
    def __call__(self, *inputs):
        from .tensor import Tensor, as_tensor
        tensors = [x for x in inputs if isinstance(x, Tensor)]
        if not tensors:
            raise TypeError(f"{type(self).__name__} needs at least one Tensor input")
        dev = tensors[0].device
        for t in tensors:
            if t.device != dev:
                raise ValueError(f"{type(self).__name__}: inputs on different devices "
                                 f"({dev} and {t.device}); move them with .to()")
        inputs = [as_tensor(x, dev, like=tensors[0]) for x in inputs]
        self.dev = dev
        self.needs_grad = tuple(x.requires_grad for x in inputs)
        ys = self.forward(*[x.data for x in inputs])
        single = not isinstance(ys, tuple)
        outputs = [Tensor(y, device=dev) for y in ((ys,) if single else ys)]
        if config.grad_enabled and any(self.needs_grad):
            self.generation = max(x.generation for x in inputs)
            for out in outputs:
                out.creator, out.requires_grad, out.generation = self, True, self.generation + 1
            self.inputs = inputs
            # Weak references: the graph must not keep the outputs (and their memory) alive.
            self.outputs = [weakref.ref(out) for out in outputs]
        return outputs[0] if single else tuple(outputs)

    def forward(self, *xs):
        raise NotImplementedError(f"{type(self).__name__}.forward is abstract")

    def backward(self, *gys):
        raise NotImplementedError(f"{type(self).__name__}.backward is abstract")
