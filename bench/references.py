"""The model families' own projects, imported: what the families bench runs against Tessera,
and the tests' oracles.

DALLE-pytorch 1.6.6 and OpenCLIP install `--no-deps` (the bench's `references` extra,
bench/pyproject.toml, lists what their imports need): some of their imports have no wheel for
this Python or torch (youtokentome; torchvision, whose PyPI build does not load beside torch
2.13's CPU build; taming-transformers, which pulls pytorch-lightning), and none of those is on
the path the tests and the bench exercise (DALLE, DiscreteVAE, CLIP's BPE, OpenCLIP's model classes). When
such a module cannot be imported, a stand-in takes its name in sys.modules for this process only,
and any use of one raises, so a test that reaches it fails instead of passing on a stand-in.
Nothing here is used by the server.

    from tessera.bench.references import import_dalle_pytorch
    dalle_pytorch = import_dalle_pytorch()   # DALLE, DiscreteVAE, CLIP's BPE tokenizer
"""
from __future__ import annotations

import importlib
import sys
import types


class _AbsentType(type):
    def __getattr__(cls, attr: str):  # InterpolationMode.BICUBIC as a default argument, ...
        if attr.startswith("__"):
            raise AttributeError(attr)
        return cls


class _Absent(metaclass=_AbsentType):
    """What a stand-in module hands out: a class that refuses to be used (its attributes,
    read at import time as default arguments, are itself)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("a stand-in for a module that is not installed was used by a test")


def _stand_in(name: str) -> None:
    try:
        importlib.import_module(name)
        return
    except Exception:  # noqa: BLE001 - absent, or present but unloadable (torchvision)
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub in sys.modules and getattr(sys.modules[sub], "__tessera_stand_in__", False):
            continue
        module = types.ModuleType(sub)
        module.__tessera_stand_in__ = True
        module.__path__ = []  # a package, so submodules can be stood in too
        module.__getattr__ = lambda attr: _Absent if not attr.startswith("__") else None
        sys.modules[sub] = module
        if i > 1:
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], module)


def _drop_broken(prefix: str) -> None:
    """A failed import can leave half-initialised modules behind; clear them first."""
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        if not getattr(sys.modules[name], "__tessera_stand_in__", False):
            del sys.modules[name]


def import_dalle_pytorch():
    """`dalle_pytorch` 1.6.6, with stand-ins for youtokentome, transformers, taming and (where
    setuptools no longer ships it) pkg_resources, whose get_distribution it imports unused."""
    for name in ("youtokentome", "transformers", "taming.models.vqgan", "pkg_resources"):
        _stand_in(name)
    import dalle_pytorch
    return dalle_pytorch


def import_open_clip():
    """`open_clip`, with a stand-in torchvision where the installed one cannot load."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        _drop_broken("torchvision")
        for name in ("torchvision.transforms.functional", "torchvision.ops.misc"):
            _stand_in(name)
    import open_clip
    return open_clip


def import_dall_e():
    """OpenAI's `dall_e` package (its dVAE), as installed `--no-deps`."""
    import dall_e
    return dall_e


def import_min_dalle():
    """min_dalle, with the global state its import changes put back: it turns autograd off for the
    whole process (torch.set_grad_enabled(False)) and sets the thread count to os.cpu_count()."""
    import torch
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    import min_dalle
    import min_dalle.min_dalle  # noqa: F401
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
    return min_dalle
