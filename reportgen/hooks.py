"""Borrow a model and give it back unchanged; catch layer outputs with forward hooks.

``borrowed`` records every module's training flag and every parameter's ``requires_grad`` and ``.grad``, and
restores them in ``finally``. ``capture`` registers forward hooks and removes them in ``finally``, whatever
happens in between.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from reportgen.errors import MethodError, ModelError
from reportgen.names import close_matches

__all__ = ["borrowed", "capture", "model_state", "find_layer"]


def model_state(model: nn.Module) -> tuple:
    """A comparable snapshot of what methods must not change: modes, flags, grads, hook counts."""
    modes = tuple(m.training for m in model.modules())
    flags = tuple(p.requires_grad for p in model.parameters())
    grads = tuple(id(p.grad) if p.grad is not None else None for p in model.parameters())
    hooks = tuple(
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(getattr(m, "_backward_pre_hooks", {})))
        for m in model.modules()
    )
    return modes, flags, grads, hooks


@contextmanager
def borrowed(model: nn.Module, *, freeze: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (and, with ``freeze``, stop weight gradients) for the block; restore it after."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        if freeze:
            for p, _, _ in params:
                p.requires_grad_(False)
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag, grad in params:
            p.requires_grad_(flag)
            p.grad = grad


@contextmanager
def capture(model: nn.Module, layers: Sequence[str], *, grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Catch the outputs of ``layers`` (qualified names) during forward passes run inside the block.

    With ``grad=True`` each caught output becomes a leaf that requires grad, and the rest of the network runs
    from it: gradients w.r.t. it come from ``torch.autograd.grad`` and stop there (nothing upstream is built).
    The next module receives a clone, so an in-place activation after the layer cannot alter what was caught.

    Yields:
        name → tensor (N, C, h, w), filled by each forward pass (the last pass wins).
    """
    caught: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise MethodError(f"layer {name!r} returns {type(output).__name__}, expected a tensor (N, C, H, W)")
            if output.ndim != 4:
                raise MethodError(f"layer {name!r} outputs shape {tuple(output.shape)}, expected (N, C, H, W)")
            if grad:
                # The earliest caught layer becomes the root of the graph; later ones keep their history to it.
                leaf = output if output.requires_grad else output.detach().requires_grad_(True)
                caught[name] = leaf
                return leaf.clone()
            caught[name] = output
            return output.clone()

        return hook

    try:
        for name in dict.fromkeys(layers):
            module = find_layer(model, name)
            if isinstance(module, torch.jit.ScriptModule):
                raise MethodError(f"layer {name!r} is inside a TorchScript model: hooks cannot be attached to it")
            handles.append(module.register_forward_hook(make_hook(name)))
        yield caught
    finally:
        for handle in handles:
            handle.remove()


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule with qualified name ``name``; ``ModelError`` with the closest names when it does not exist."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    hint = close_matches(name, [n for n in modules if n])
    raise ModelError(f"no layer named {name!r}" + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""))
