"""Record classes -- what ``@dataclass`` gives, without importing ``dataclasses``.

``import dataclasses`` pulls in ``inspect``, ``ast``, ``dis`` and
``tokenize``: about 7 ms of a 35 ms ``minibox run`` on this machine, spent
before the container even starts.  :func:`record` builds the same class
behaviour from the class's annotations -- keyword or positional
construction with defaults, ``__post_init__``, ``frozen`` assignment errors,
``__eq__``, ``__hash__`` (frozen classes), ``__repr__`` and ``__match_args__``
-- with one generic ``__init__`` instead of compiling a new one per class.

The standard tools keep working: ``dataclasses.fields()``,
``dataclasses.replace()``, ``dataclasses.asdict()`` and ``is_dataclass()`` read
``__dataclass_fields__``, which is built (by ``dataclasses`` itself, on a
shadow class) the first time someone asks -- a caller of those functions has
imported ``dataclasses`` already.  Assigning to a frozen instance raises
``dataclasses.FrozenInstanceError`` (an AttributeError), imported then.

Supported subset: fields from the class's own annotations (no inheritance
of fields), defaults, ``field(default_factory=...)``; no ``ClassVar``,
``InitVar``, ``order`` or ``kw_only``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs milliseconds; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_: object) -> object:
        return lambda function: function

_MISSING = object()


class _Factory:
    """A ``field(default_factory=...)`` marker, replaced by the factory's value per instance."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made fresh for every instance (``dataclasses.field(default_factory=...)``)."""
    return _Factory(default_factory)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    # One dict built from the class's template and stored with one update: this
    # runs for every MountOp of every start, so it stays a few C-level calls.
    cls = type(self)
    values: dict[str, Any] = dict(cls.__record_template__)
    if args:
        names: tuple[str, ...] = cls.__record_names__
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments but {len(args)} were given")
        values.update(zip(names, args, strict=False))
        if kwargs and not kwargs.keys().isdisjoint(names[:len(args)]):
            twice = next(name for name in names[:len(args)] if name in kwargs)
            raise TypeError(f"{cls.__name__}() got multiple values for argument {twice!r}")
    if kwargs:
        unknown = kwargs.keys() - values.keys()
        if unknown:
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        values.update(kwargs)
    for name in cls.__record_required__:
        if values[name] is _MISSING:
            raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
    for name, factory in cls.__record_factories__:
        if values[name] is factory:  # not given: a fresh value for this instance
            values[name] = factory.make()
    self.__dict__.update(values)  # past a frozen class's __setattr__, as dataclasses' __init__ goes
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in self.__record_names__)


def _repr(self: Any) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_names__)
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: object) -> Any:  # a bool, or NotImplemented for another class
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: object) -> None:
    import dataclasses

    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    import dataclasses

    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _shadow(owner: Any) -> Any:
    """The class as ``dataclasses`` would build it (once per class): for fields() and help()."""
    shadow: Any = owner.__dict__.get("__record_shadow__")
    if shadow is None:
        import dataclasses

        namespace: dict[str, Any] = {"__annotations__": dict(owner.__record_annotations__),
                                     "__module__": owner.__module__, "__qualname__": owner.__qualname__}
        for name, default in owner.__record_defaults__.items():
            namespace[name] = dataclasses.field(default_factory=default.make) if type(default) is _Factory else default
        shadow = dataclasses.dataclass(frozen=owner.__record_frozen__)(type(owner.__name__, (), namespace))
        type.__setattr__(owner, "__record_shadow__", shadow)
    return shadow


class _DataclassFields:
    """``__dataclass_fields__``, built by ``dataclasses`` from a shadow copy of the class on first use."""

    def __get__(self, instance: object, owner: Any) -> dict[str, Any]:
        fields: dict[str, Any] = _shadow(owner).__dataclass_fields__
        return fields


class _Signature:
    """``__signature__`` for :func:`inspect.signature` and help(): the dataclass's, not ``(*args, **kwargs)``."""

    def __get__(self, instance: object, owner: Any) -> Any:
        import inspect

        return inspect.signature(_shadow(owner))


def replace(obj: T, **changes: Any) -> T:
    """A copy of record ``obj`` with ``changes`` (``dataclasses.replace``; ``__post_init__`` runs again)."""
    names: tuple[str, ...] = obj.__record_names__  # type: ignore[attr-defined]
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    return type(obj)(**{name: changes[name] if name in changes else getattr(obj, name) for name in names})


@dataclass_transform(field_specifiers=(field,))
def record(*, frozen: bool = False) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``@record(frozen=True)`` is ``@dataclass(frozen=True)`` for the supported subset."""

    def build(cls: type[T]) -> type[T]:
        # not inspect.get_annotations: importing inspect is what this module avoids
        annotations: dict[str, Any] = dict(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
        defaults: dict[str, Any] = {}
        for name in annotations:
            value = cls.__dict__.get(name, _MISSING)
            if value is _MISSING:
                if defaults:
                    raise TypeError(f"{cls.__name__}.{name}: a field without a default follows one with a default")
                continue
            defaults[name] = value
            if type(value) is _Factory:
                delattr(cls, name)  # as dataclasses does: no shared mutable default on the class
        attributes: dict[str, Any] = {
            "__record_names__": tuple(annotations),
            "__record_template__": {name: defaults.get(name, _MISSING) for name in annotations},
            "__record_required__": tuple(name for name in annotations if name not in defaults),
            "__record_factories__": tuple((name, value) for name, value in defaults.items()
                                          if type(value) is _Factory),
            "__record_annotations__": annotations,
            "__record_defaults__": defaults,
            "__record_frozen__": frozen,
            "__match_args__": tuple(annotations),
            "__dataclass_fields__": _DataclassFields(),
            "__signature__": _Signature(),
            "__init__": _init,
            "__repr__": _repr,
            "__eq__": _eq,
        }
        if frozen:
            attributes.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr, __hash__=_hash)
        else:
            attributes["__hash__"] = None  # mutable and comparable: unhashable, as a dataclass
        for name, value in attributes.items():
            if name in ("__repr__", "__eq__") and name in cls.__dict__:
                continue  # the class wrote its own
            setattr(cls, name, value)
        return cls

    return build
