"""Timing hooks of the training bench: the language model's forward/backward and the image spaces' encoders."""
from __future__ import annotations

import time
from typing import Any

import torch


class LMTimer:
    """Wall time of the language model's decoder forward and backward, from hooks (CPU ops are synchronous).

    Forward: a pre-hook and a post-hook on the decoder module. Backward: a tensor hook on the decoder's
    output (its gradient arrives: the LM backward starts) and on its input embeddings (their gradient is
    complete: it ends). Autograd runs nodes newest-first, so nothing outside the decoder runs between the
    two. When the inputs need no gradient the backward is closed by `close_backward` (after backward).
    """

    def __init__(self, decoder: torch.nn.Module, sync: Any = None) -> None:
        self.forward_s, self.backward_s = 0.0, 0.0
        self._sync = sync or (lambda: None)
        self._t0 = self._tb = None
        self._handles = [decoder.register_forward_pre_hook(self._pre, with_kwargs=True),
                         decoder.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs) -> None:
        if not torch.is_grad_enabled():
            return
        self._sync()
        self._t0 = time.perf_counter()
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.requires_grad:
            embeds.register_hook(self._backward_end)

    def _post(self, module, args, kwargs, output) -> None:
        if self._t0 is None:
            return
        self._sync()
        self.forward_s += time.perf_counter() - self._t0
        self._t0 = None
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        if hidden.requires_grad:
            hidden.register_hook(self._backward_start)

    def _backward_start(self, grad: torch.Tensor) -> None:
        self._sync()
        self._tb = time.perf_counter()

    def _backward_end(self, grad: torch.Tensor) -> None:
        if self._tb is not None:
            self._sync()
            self.backward_s += time.perf_counter() - self._tb
            self._tb = None

    def close_backward(self) -> None:
        """End a backward whose input embeddings needed no gradient."""
        self._backward_end(torch.empty(0))

    def take(self) -> tuple[float, float]:
        """(forward s, backward s) accumulated since the last call, and reset."""
        out = (self.forward_s, self.backward_s)
        self.forward_s = self.backward_s = 0.0
        return out

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()


def _time_encoders(model) -> tuple[dict[str, float], list]:
    """Wrap the spaces' encode/embed_codes (instance attributes, undone by the returned restore list)."""
    spent = {"s": 0.0, "depth": 0}  # depth: a wrapping space (AffineSpace) calls its base's encode inside its own
    restore = []
    for space in {id(s): s for s in (model.read_space, model.write_space) if s is not None}.values():
        for name in ("encode", "embed_codes"):
            original = getattr(space, name)

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                spent["depth"] += 1
                try:
                    return _original(*args, **kwargs)
                finally:
                    spent["depth"] -= 1
                    if not spent["depth"]:
                        spent["s"] += time.perf_counter() - start

            setattr(space, name, timed)
            restore.append((space, name))
    return spent, restore
