"""A pickle reader that rebuilds tensors and never runs code (for foreign training checkpoints).

Original checkpoints of the priors (``105000.ckpt``, ``stable_zero123.ckpt``, MVDream's ``.pt``)
are Lightning training checkpoints: besides tensors they pickle callbacks, hyper-parameters,
numpy scalars ... which ``torch.load(weights_only=True)`` refuses. :data:`TENSOR_ONLY_PICKLE` is a
``pickle_module`` for ``torch.load`` that rebuilds tensors from a fixed table of torch globals and
replaces every other object by an inert :class:`UnloadedObject`: nothing is imported, looked up
or called. It is the fallback of :func:`threestudio_like.models.checkpoints.load_state_dict_file`.
"""
from __future__ import annotations

import _compat_pickle
import copyreg
import pickle
import types
from collections import Counter, OrderedDict
from typing import Dict, Optional

import torch
import torch.nn as nn


class UnloadedObject:
    """Stands for an object of a checkpoint that was not rebuilt (see :func:`load_state_dict_file`).

    A checkpoint's global that is not needed for tensors (a Lightning callback class, an
    ``argparse.Namespace``, a numpy scalar, ``os.system`` ...) becomes one of these, and so does
    every "call" of it: the constructor arguments, the ``__setstate__`` state and the appended or
    set items are only recorded. Nothing is imported, looked up or executed.
    """

    __slots__ = ("name", "args", "kwargs", "state", "items", "entries")

    def __init__(self, name: str, args: Optional[tuple] = None, kwargs: Optional[dict] = None):
        self.name = name
        """``module.qualname`` of the global it stands for."""
        self.args = args
        """Arguments it was "called" with (None for the bare global)."""
        self.kwargs = dict(kwargs or {})
        self.state = None
        self.items: list = []
        self.entries: list = []

    def __repr__(self) -> str:
        return f"<not loaded: {self.name}{'' if self.args is None else '(...)'}>"


def _latin1_encode(text, encoding="latin1", *rest):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (latin-1 only)."""
    if isinstance(text, str) and not rest and str(encoding).lower().replace("_", "-") in ("latin1", "latin-1", "iso-8859-1"):
        return text.encode("latin-1")
    return UnloadedObject("_codecs.encode", (text, encoding) + tuple(rest))


def _rebuild_from_type(func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2`` for plain tensors and parameters only.

    A tensor of an unknown subclass is kept as a plain tensor (its Python attributes dropped).
    """
    ret = _call_trusted(func, args)
    if not isinstance(ret, torch.Tensor):
        return ret
    if new_type is torch.Tensor or new_type is nn.Parameter:
        if type(ret) is not new_type:
            ret = ret.as_subclass(new_type)
        if state:
            ret = torch._utils._set_obj_state(ret, state)
    return ret


_TENSOR_GLOBALS: Dict[str, object] = {}
_TRUSTED_CALLS: Dict[int, object] = {}
_TRUSTED_NEW = (OrderedDict, Counter, torch.Size, torch.Tensor, nn.Parameter)


def _tensor_globals() -> Dict[str, object]:
    """The globals a tensor state dict needs: torch's rebuild functions, storages, dtypes,
    ``torch.Size``/``torch.device``/layouts and ``collections.OrderedDict`` (what
    ``torch.load(weights_only=True)`` allows by default, minus numpy and generic builtins)."""
    if _TENSOR_GLOBALS:
        return _TENSOR_GLOBALS
    found: Dict[str, object] = {
        "collections.OrderedDict": OrderedDict,
        "collections.Counter": Counter,
        "torch.nn.parameter.Parameter": nn.Parameter,
        "torch.Tensor": torch.Tensor,
        "torch._tensor.Tensor": torch.Tensor,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
        "_codecs.encode": _latin1_encode,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
                 "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor", "_rebuild_wrapper_subclass",
                 "_rebuild_device_tensor_from_cpu_tensor"):
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            found[f"torch._utils.{name}"] = fn
    callables = [v for v in found.values() if callable(v) and v is not torch.Tensor]
    # data only (never called): dtypes, layouts, memory formats, quantisation schemes, storages
    constants = tuple(t for t in (torch.dtype, torch.layout, torch.memory_format, getattr(torch, "qscheme", None)) if t)
    for attr, value in vars(torch).items():
        if isinstance(value, constants):
            found[f"torch.{attr}"] = value
    for storage in (torch.UntypedStorage, torch.storage.TypedStorage):
        found[f"{storage.__module__}.{storage.__name__}"] = storage
    _TRUSTED_CALLS.update({id(fn): fn for fn in callables})
    _TENSOR_GLOBALS.update(found)
    return _TENSOR_GLOBALS


def _call_trusted(func, args, kwargs=None):
    """``func(*args)`` for the trusted tensor functions; a placeholder for an untrusted global."""
    if isinstance(func, UnloadedObject):
        return UnloadedObject(func.name, tuple(args), kwargs)
    _tensor_globals()
    if _TRUSTED_CALLS.get(id(func)) is not func:
        raise pickle.UnpicklingError(f"refused to call {type(func).__name__} {func!r}")
    return func(*args, **(kwargs or {}))


class _TensorOnlyUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A pickle reader that rebuilds tensors and turns every other global into an
    :class:`UnloadedObject`.

    ``find_class`` never imports or looks anything up: it answers from a fixed table of tensor
    globals. Every opcode that could call or mutate an object (REDUCE, NEWOBJ, INST/OBJ, BUILD,
    APPEND(S), SETITEM(S), ADDITEMS, EXT*) is re-implemented to accept only the trusted tensor
    functions, containers and placeholders. ``torch.load`` supplies ``persistent_load`` (storages).
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str):
        if self.proto < 3 and self.fix_imports:  # Python 2 names
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        known = _tensor_globals().get(full)
        return known if known is not None else UnloadedObject(full)

    def get_extension(self, code: int) -> None:  # no shared extension cache
        key = copyreg._inverted_registry.get(code)  # type: ignore[attr-defined]
        if not key:
            raise pickle.UnpicklingError(f"unregistered extension code {code}")
        self.append(self.find_class(*key))

    def _instantiate(self, klass, args) -> None:  # INST / OBJ
        self.append(_call_trusted(klass, args))

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = _call_trusted(self.stack[-1], args)

    def _new(self, cls, args, kwargs) -> object:
        if isinstance(cls, UnloadedObject):
            return UnloadedObject(cls.name, tuple(args), kwargs)
        if cls is nn.Parameter:
            return nn.Parameter(*args, **kwargs)
        if any(cls is allowed for allowed in _TRUSTED_NEW):
            return cls.__new__(cls, *args, **kwargs)
        raise pickle.UnpicklingError(f"refused to create an object of {cls!r}")

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, UnloadedObject):
            inst.state = state
        elif type(inst) is torch.Tensor:  # legacy tensors: (storage, offset, size, stride)
            inst.set_(*state)
        elif type(inst) is nn.Parameter:
            inst.__setstate__(state)
        elif type(inst) in (OrderedDict, Counter) and isinstance(state, dict):
            inst.__dict__.update(state)
        else:
            raise pickle.UnpicklingError(f"refused to set the state of {type(inst).__name__} {inst!r}")

    def _target(self, kinds: tuple, what: str):
        target = self.stack[-1]
        if not (isinstance(target, UnloadedObject) or type(target) in kinds):
            raise pickle.UnpicklingError(f"refused to {what} {type(target).__name__}")
        return target

    def _load_append(self) -> None:
        item = self.stack.pop()
        target = self._target((list,), "append to")
        (target.items if isinstance(target, UnloadedObject) else target).append(item)

    def _load_appends(self) -> None:
        items = self.pop_mark()
        target = self._target((list,), "extend")
        (target.items if isinstance(target, UnloadedObject) else target).extend(items)

    def _set_items(self, items: list) -> None:
        target = self._target((dict, OrderedDict, Counter), "set items of")
        for i in range(0, len(items) - 1, 2):
            if isinstance(target, UnloadedObject):
                target.entries.append((items[i], items[i + 1]))
            else:
                target[items[i]] = items[i + 1]

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items([key, value])

    def _load_setitems(self) -> None:
        self._set_items(self.pop_mark())

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self._target((set,), "add items to")
        if isinstance(target, UnloadedObject):
            target.items.extend(items)
        else:
            target.update(items)

    for _opcode, _handler in (
        (pickle.REDUCE, _load_reduce), (pickle.NEWOBJ, _load_newobj), (pickle.NEWOBJ_EX, _load_newobj_ex),
        (pickle.BUILD, _load_build), (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
        (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems), (pickle.ADDITEMS, _load_additems),
    ):
        dispatch[_opcode[0]] = _handler
    del _opcode, _handler


def _tensor_only_load(file, **kwargs):
    return _TensorOnlyUnpickler(file, **kwargs).load()


TENSOR_ONLY_PICKLE = types.ModuleType("threestudio_like_tensor_only_pickle")
"""A ``pickle_module`` for ``torch.load(weights_only=False)`` that rebuilds only tensors."""
TENSOR_ONLY_PICKLE.Unpickler = _TensorOnlyUnpickler  # type: ignore[attr-defined]
TENSOR_ONLY_PICKLE.load = _tensor_only_load  # type: ignore[attr-defined]
TENSOR_ONLY_PICKLE.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
