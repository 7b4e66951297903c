"""Global switches: whether calling a Function records the graph."""
import contextlib

grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Run ops without recording the graph (evaluation, optimizer updates)."""
    global grad_enabled
    old, grad_enabled = grad_enabled, False
    try:
        yield
    finally:
        grad_enabled = old
