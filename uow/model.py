"""Models: plain msgspec Structs that map to tables.

A model is declared once, with its constraints in ``Annotated`` metadata::

    class User(Model, table="users"):
        id: Annotated[int | None, PrimaryKey()] = None    # generated when None
        name: str
        email: Annotated[str, Unique()]
        age: int = 0

    class Post(Model, table="posts"):
        id: Annotated[int | None, PrimaryKey()] = None
        author_id: Annotated[int | None, ForeignKey(User, on_delete="cascade")] = None
        title: str
        author: User | None = relation("author_id")

Every model is keyword-only. Classes without ``table=`` are abstract bases.
Mixins (:class:`SoftDelete`, :class:`Versioned`) are plain classes whose
annotated fields are copied into the model that lists them.

The mapping of a model is computed on first use and cached as a
:class:`TableInfo`; :func:`table_info` returns it.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import enum
import gc
import hashlib
import inspect
import operator
import sys
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import msgspec
from msgspec import StructMeta

from uow.assignments import WATCHED, ChildList, note_assignment, note_relation_assigned, set_attribute, unwatched_list
from uow.errors import (
    ModelDefinitionError,
    RelationNotLoadedError,
    SessionStateError,
    UnknownFieldError,
    ValidationError,
)
from uow.expressions import Column

OnDelete = Literal["no action", "restrict", "cascade", "set null"]
ColumnKind = Literal[
    "integer",
    "float",
    "boolean",
    "text",
    "bytes",
    "datetime",
    "date",
    "time",
    "decimal",
    "uuid",
    "json",
]


# --- column markers ---------------------------------------------------------


class PrimaryKey:
    """Marks the primary-key column.

    ``generated`` defaults to true for an ``int | None`` column: the database
    assigns the key when the value is ``None`` at insert.
    """

    __slots__ = ("generated",)

    def __init__(self, *, generated: bool | None = None):
        self.generated = generated


class ForeignKey:
    """Marks a column that references another model's primary key.

    ``target`` is the model class, or its class or table name as a string for
    models not defined yet (self references). ``on_delete`` is what the database
    does to this row when the referenced row is deleted.
    """

    __slots__ = ("target", "on_delete")

    def __init__(self, target: type[Model] | str, *, on_delete: OnDelete = "no action"):
        if on_delete not in ("no action", "restrict", "cascade", "set null"):
            raise ModelDefinitionError(
                f"on_delete must be 'no action', 'restrict', 'cascade' or 'set null', not {on_delete!r}"
            )
        self.target = target
        self.on_delete = on_delete


class _OverColumns:
    """What :class:`Unique` and :class:`Index` share: the columns a model's
    ``constraints`` or ``indexes`` name (none in a column's annotation) and
    an optional name."""

    __slots__ = ("columns", "name")

    def __init__(self, *columns: str, name: str | None = None):
        self.columns = columns
        self.name = name

    def __repr__(self) -> str:
        named = "" if self.name is None else f", name={self.name!r}"
        return f"{type(self).__name__}({', '.join(map(repr, self.columns))}{named})"


class Unique(_OverColumns):
    """A unique constraint.

    ``Unique()`` in a column's ``Annotated`` metadata: the column's non-null
    values are unique in the table. ``Unique("room_id", "day")`` in a model's
    ``constraints``: no two rows hold the same values in those columns
    together (a row with ``None`` in one of them clashes with none), as one
    constraint named ``name`` (``<table>_<column>_..._key`` by default)::

        class Booking(Model, table="bookings", constraints=[Unique("room_id", "day")]):
            id: Annotated[int | None, PrimaryKey()] = None
            room_id: int
            day: dt.date
    """

    __slots__ = ()


class Index(_OverColumns):
    """A (non-unique) index.

    ``Index()`` in a column's ``Annotated`` metadata indexes that column.
    ``Index("room_id", "day")`` in a model's ``indexes`` indexes those
    columns together, named ``name`` (``ix_<table>__<column>_..._...`` by
    default)::

        class Visit(Model, table="visits", indexes=[Index("guest", "day")]):
            id: Annotated[int | None, PrimaryKey()] = None
            guest: str
            day: dt.date
    """

    __slots__ = ()


class SoftDeleteColumn:
    """Marks the timestamp column that soft delete sets (see :class:`SoftDelete`)."""

    __slots__ = ()


class VersionColumn:
    """Marks the integer column used for optimistic locking (see :class:`Versioned`)."""

    __slots__ = ()


# --- mixins -----------------------------------------------------------------


if TYPE_CHECKING:
    # what type checkers see: struct fields, so that Note(deleted_at=...) and
    # Post(version=...) are keyword arguments of the model as they are at run time

    class SoftDelete(msgspec.Struct, kw_only=True):
        deleted_at: Annotated[dt.datetime | None, SoftDeleteColumn()] = None

    class Versioned(msgspec.Struct, kw_only=True):
        version: Annotated[int, VersionColumn()] = 1

else:

    class SoftDelete:
        """Mixin: rows are hidden by ``session.soft_delete`` instead of deleted.

        ``class Note(Model, SoftDelete, table="notes"): ...`` gains ``deleted_at``.
        """

        deleted_at: Annotated[dt.datetime | None, SoftDeleteColumn()] = None

    class Versioned:
        """Mixin: optimistic locking through a ``version`` column.

        Every flushed update and delete checks the version it read; a row changed by
        another transaction in the meantime raises :class:`uow.errors.ConcurrencyError`.
        """

        version: Annotated[int, VersionColumn()] = 1


_MIXINS: tuple[type, ...] = (SoftDelete, Versioned)


# --- relations --------------------------------------------------------------


NOT_LOADED: Any = msgspec.UNSET
"""The value of a relation attribute that nothing has loaded or set. It is
msgspec's ``UNSET``, so encoding a model (``msgspec.json.encode(post)``) leaves
such relations out instead of failing on them; reading one through the model
raises :class:`RelationNotLoadedError`."""


class _Unlinked(enum.Enum):
    """What a many-to-one relation holds once ``None`` is assigned to it, until
    the session empties the foreign key: it reads as ``None``.

    An enum member whose value is ``None``, so msgspec encodes it as ``null``
    (JSON, msgpack, ``to_builtins``) and copies keep the one marker."""

    UNLINKED = None

    def __repr__(self) -> str:
        return "None"

    def __bool__(self) -> bool:
        return False


UNLINKED: Any = _Unlinked.UNLINKED


class _RelationSpec:
    __slots__ = ("via", "back", "delete_orphans")

    def __init__(self, via: str | None, back: str | None, delete_orphans: bool):
        self.via = via
        self.back = back
        self.delete_orphans = delete_orphans


def relation(via: str | None = None, *, back: str | None = None, delete_orphans: bool = False) -> Any:
    """Declare a relation attribute; it is never loaded implicitly.

    Many-to-one: ``author: User | None = relation("author_id")`` names the
    foreign-key column on this model. Assigning an object (new or loaded) fills
    the column at flush, even when the parent's key is generated in that flush.

    One-to-many: ``posts: list[Post] = relation(back="author_id")`` names the
    foreign-key column on the other model. Putting an object in the list
    points it at the owner. With ``delete_orphans=True`` (an aggregate's
    parts: ``lines: list[Line] = relation(back="order_id",
    delete_orphans=True)``), an object taken out of the list and not put in
    another owner's is deleted at the next flush.
    """
    return _RelationSpec(via, back, delete_orphans)


def filled_by_relation() -> Any:
    """The default of a NOT NULL foreign key that a relation fills::

        order_id: Annotated[int, ForeignKey(Order)] = filled_by_relation()
        order: Order | None = relation("order_id")

    It is ``None``: the session fills the key from the parent the relation
    holds (at ``add``, or at the flush that inserts a new parent), and refuses
    an object with neither. Typed ``Any`` so that a type checker accepts it
    on an ``int`` field, as it does ``relation()``."""
    return None


_UNKNOWN: Any = object()


class _Loaded:
    """A value :meth:`RelationDescriptor.set_loaded` hands to msgspec's setattr,
    which stores it unwrapped and tracks the object for the garbage collector."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class RelationDescriptor:
    """Class attribute that replaces a relation field.

    On instances it returns the loaded value or raises
    :class:`RelationNotLoadedError`; on the class it describes the relation, for
    ``include(Post.author)``.
    """

    __slots__ = ("name", "model", "_member", "spec", "_back_relations")

    def __init__(self, name: str, model: type[Model], member: Any, spec: _RelationSpec):
        self.name = name
        self.model = model
        self._member = member
        self.spec = spec
        self._back_relations: dict[type, str | None] = {}
        """Per type of child put in the list, what :meth:`_back_relation_of` says."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = self._member.__get__(instance, owner)
        if value is NOT_LOADED:
            model, name = self.model.__name__, self.name
            advice = f"load it with include({model}.{name}) or assign it"
            if self.spec.back is not None:  # a list: a new object has none until one is given
                advice += f" (an object built without it gets one by assignment: obj.{name} = [])"
            raise RelationNotLoadedError(f"{model}.{name} is not loaded; {advice}")
        if value is UNLINKED:
            return None
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        if type(value) is _Loaded:  # from set_loaded, through msgspec's own setattr
            self._member.__set__(instance, value.value)
            return
        via = self.spec.via
        if via is None:
            if not unwatched_list(value, instance):
                self._member.__set__(instance, value)
                return
            # a list assigned: the object's own ChildList, each child pointed at it
            children = ChildList(value, instance, self, changed=True)
            for child in children:
                self.link_child(instance, child)
            replaced = self._member.__get__(instance, type(instance))
            if self.deletes_orphans and type(replaced) is ChildList and replaced.belongs_to(instance):
                children.take_out([*(replaced.removed or ()), *replaced])  # may leave orphans
            self._member.__set__(instance, children)
            return
        if value is None:
            value = UNLINKED  # assigned None: the next flush empties the foreign key
        self._member.__set__(instance, value)
        note_relation_assigned(instance, via)

    def set_loaded(self, instance: Any, value: Any) -> None:
        """Set the value as loaded (``None``: no parent), not as an assignment
        the next flush writes."""
        if value is None or value is NOT_LOADED or value is UNLINKED or gc.is_tracked(instance):
            self._member.__set__(instance, value)
            return
        # msgspec leaves a struct of plain values untracked by the cyclic garbage
        # collector, and only its own setattr tracks it again; an object left
        # untracked that holds a list or a parent can close a cycle (a post and
        # its author's list of posts) that is then never freed
        set_attribute(instance, self.name, _Loaded(value))

    @property
    def deletes_orphans(self) -> bool:
        """Whether an object taken out of this one-to-many list is deleted."""
        return self.spec.delete_orphans

    def link_child(self, owner: Any, child: Any) -> None:
        """Point ``child``, being put in ``owner``'s list of this one-to-many
        relation, at ``owner``: its many-to-one relation through the same
        foreign key is assigned ``owner`` (``child.author = owner``), so the
        next flush moves a tracked child as that assignment would. A child
        model without such a relation gets ``owner``'s key in its foreign key
        (a tracked child is refused while ``owner`` has no key); an object of
        another model is left alone."""
        kind = type(child)
        back = self._back_relation_cached(kind)
        if back is None:  # another model
            return
        if back:
            setattr(child, back, owner)
            return
        column = self.spec.back
        assert column is not None
        key = table_info(self.model).key_of(owner)
        if key is not None:
            setattr(child, column, key)
        elif id(child) in WATCHED:  # tracked: its row would stay where it is
            raise SessionStateError(
                f"{kind.__name__} has no relation through {column!r}, so a tracked one can only be put in "
                f"the {self.name} of a {self.model.__name__} that has a key: flush that first, or declare "
                f"the relation ({column.removesuffix('_id') or 'parent'}: "
                f'{self.model.__name__} | None = relation("{column}"))'
            )

    def back_relation(self, kind: type) -> str | None:
        """The name of the many-to-one relation of ``kind`` (this relation's
        model) through this one's foreign key, back to its owner, if any."""
        return self._back_relation_cached(kind) or None

    def _back_relation_cached(self, kind: type) -> str | None:
        back = self._back_relations.get(kind, _UNKNOWN)
        if back is _UNKNOWN:
            back = self._back_relations[kind] = self._back_relation_of(kind)
        return back  # type: ignore[no-any-return]

    def _back_relation_of(self, kind: type) -> str | None:
        """The name of ``kind``'s many-to-one relation back to this one's
        owner; ``""`` when ``kind`` is this relation's model but has none,
        ``None`` when ``kind`` is another model."""
        relation = table_info(self.model).relations[self.name]
        if self.spec.back is None or kind is not table_info(relation.target).model:
            return None
        owner_table = table_info(self.model).name
        for name, back in table_info(kind).relations.items():
            if not back.many and back.local_column == self.spec.back and table_info(back.target).name == owner_table:
                return name
        return ""

    def raw(self, instance: Any) -> Any:
        """The stored value, :data:`NOT_LOADED` included, without raising."""
        return self._member.__get__(instance, type(instance))

    @property
    def reader(self) -> Callable[[Any], Any]:
        """What :meth:`raw` does, as the slot's own getter: one call in C per
        object where the session reads the relation of every tracked object."""
        return self._member.__get__  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<relation {self.model.__name__}.{self.name}>"


# --- the metaclass and base --------------------------------------------------


class ModelMeta(StructMeta):
    """Makes every model keyword-only and weakly referenceable, and records its
    table name."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        *,
        table: str | None = None,
        constraints: Sequence[Unique] = (),
        indexes: Sequence[Index] = (),
        **struct_options: Any,
    ) -> ModelMeta:
        struct_options.setdefault("kw_only", True)
        # a session keeps weak references to the objects it let go of, so that
        # relations never add them back as new rows (8 bytes per object)
        struct_options.setdefault("weakref", True)
        _merge_mixin_fields(bases, namespace)
        relation_specs = {attr: value for attr, value in namespace.items() if isinstance(value, _RelationSpec)}
        for attr in relation_specs:
            namespace[attr] = NOT_LOADED
        cls = super().__new__(mcls, name, bases, namespace, **struct_options)
        for attr, spec in relation_specs.items():
            member = cls.__dict__[attr]
            type.__setattr__(cls, attr, RelationDescriptor(attr, cls, member, spec))  # type: ignore[arg-type]
        type.__setattr__(cls, "__uow_table_name__", table)
        type.__setattr__(cls, "__uow_table__", None)
        # a base's constraints hold in every model made from it, as its fields do
        inherited = [c for base in bases for c in getattr(base, "__uow_constraints__", ())]
        type.__setattr__(cls, "__uow_constraints__", tuple(dict.fromkeys([*inherited, *constraints])))
        inherited = [i for base in bases for i in getattr(base, "__uow_indexes__", ())]
        type.__setattr__(cls, "__uow_indexes__", tuple(dict.fromkeys([*inherited, *indexes])))
        if table is not None:
            _REGISTRY[table] = cls  # type: ignore[assignment]
            _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    # Only attribute access on the class goes through these two methods: an
    # instance's ``user.age`` is found by the type's slot lookup and never calls
    # the metaclass, so it stays a plain slot read.
    def __getattribute__(cls, name: str) -> Any:
        value = _class_getattribute(cls, name)
        if value.__class__ is _MemberDescriptor:
            return Column(cls, name)  # a column field: ``User.age >= 18``
        return value

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_") or _class_getattribute(cls, "__uow_table_name__") is None:
            raise AttributeError(f"type object {cls.__name__!r} has no attribute {name!r}")
        fields = _class_getattribute(cls, "__struct_fields__")
        raise UnknownFieldError(f"{cls.__name__} has no field {name!r}; fields: {', '.join(fields)}")


_class_getattribute: Callable[[type, str], Any] = type.__getattribute__
_MemberDescriptor = types.MemberDescriptorType


def _merge_mixin_fields(bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
    annotations = namespace.setdefault("__annotations__", {})
    for base in bases:
        for klass in reversed(base.__mro__):
            if klass in _MIXINS or (
                not isinstance(klass, StructMeta) and klass is not object and "__annotations__" in klass.__dict__
            ):
                for field, annotation in typing.get_type_hints(klass, include_extras=True).items():
                    if field not in inspect.get_annotations(klass):
                        continue
                    if field in annotations or field.startswith("_"):
                        continue
                    annotations[field] = annotation
                    if field in klass.__dict__:
                        namespace.setdefault(field, klass.__dict__[field])


@typing.dataclass_transform(kw_only_default=True, field_specifiers=(msgspec.field,))
class Model(msgspec.Struct, metaclass=ModelMeta):
    """Base class of every model; a model with ``table=`` maps to that table."""

    __uow_table_name__: ClassVar[str | None]
    __uow_table__: ClassVar[TableInfo | None]
    __uow_constraints__: ClassVar[tuple[Unique, ...]]
    __uow_indexes__: ClassVar[tuple[Index, ...]]

    # a session that tracks the object learns of the assignment: its next flush
    # compares the object with its snapshot (uow.assignments). Type checkers do
    # not see it: a __setattr__ they see lets any attribute name be assigned.
    if not TYPE_CHECKING:
        __setattr__ = note_assignment

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        """A deep copy that keeps the cycles of a model graph: a child that
        points back at the object whose list holds it points at the copy of
        that object, not at a second one. (Struct's own copying would build
        the field values before the copy they refer to exists.)"""
        copied = copy.copy(self)
        memo[id(self)] = copied  # before the fields: a cycle through them finds the copy
        cls = type(self)
        for name in cls.__struct_fields__:
            # the slot itself, past a relation's descriptor: a copy assigns nothing
            slot = _class_getattribute(cls, name)
            if isinstance(slot, RelationDescriptor):
                slot = slot._member
            value = slot.__get__(self, cls)
            value_copy = copy.deepcopy(value, memo)
            if value_copy is not value:
                slot.__set__(copied, value_copy)
        return copied


_REGISTRY: dict[str, type[Model]] = {}


# --- mapping metadata ---------------------------------------------------------


class ForeignKeyInfo(msgspec.Struct, frozen=True):
    """A resolved foreign key: ``column`` references ``target_table.target_column``."""

    column: str
    target_table: str
    target_column: str
    on_delete: OnDelete


class ColumnInfo(msgspec.Struct, frozen=True):
    """One mapped column.

    ``python_type`` is the annotation without ``None`` and metadata; ``kind`` is
    the storage family adapters map to a SQL type.
    """

    name: str
    python_type: Any
    kind: ColumnKind
    nullable: bool
    primary_key: bool = False
    generated: bool = False
    unique: bool = False
    indexed: bool = False
    foreign_key: ForeignKeyInfo | None = None
    soft_delete: bool = False
    version: bool = False


class UniqueInfo(msgspec.Struct, frozen=True):
    """A unique constraint over several columns, as the database names it."""

    name: str
    columns: tuple[str, ...]


class IndexInfo(msgspec.Struct, frozen=True):
    """An index over several columns (a model's ``indexes``), as the database names it."""

    name: str
    columns: tuple[str, ...]


class RelationInfo(msgspec.Struct, frozen=True):
    """A relation: many-to-one through ``local_column`` of this model, or
    one-to-many through ``remote_column`` of ``target``."""

    name: str
    target: Any
    many: bool
    local_column: str | None
    remote_column: str | None
    delete_orphans: bool = False
    """One-to-many: an object taken out of the list is deleted at the next flush."""


class TableInfo:
    """Everything uow knows about one model's table; built once per model.

    Rows travel between the session and adapters as tuples in the order of
    ``column_names``.
    """

    __slots__ = (
        "model",
        "name",
        "columns",
        "column_names",
        "column_index",
        "primary_key",
        "key_index",
        "foreign_keys",
        "unique_columns",
        "unique_together",
        "indexes_together",
        "shares_unique",
        "soft_delete_column",
        "version_column",
        "relations",
        "parent_relations",
        "child_relations",
        "child_relation_names",
        "holds_relations",
        "mutable_indexes",
        "mutable_columns",
        "required_indexes",
        "value_types",
        "typed_as_stored",
        "non_key_columns",
        "column_order",
        "values_of",
        "row_dict",
        "diff",
        "from_row",
    )

    def __init__(
        self,
        model: type[Model],
        name: str,
        columns: tuple[ColumnInfo, ...],
        relations: dict[str, RelationInfo],
        unique_together: tuple[UniqueInfo, ...] = (),
        indexes_together: tuple[IndexInfo, ...] = (),
    ):
        self.model = model
        self.name = name
        self.columns = columns
        self.column_names = tuple(c.name for c in columns)
        self.column_index = {c.name: i for i, c in enumerate(columns)}
        keys = [c for c in columns if c.primary_key]
        if len(keys) != 1:
            raise ModelDefinitionError(
                f"{model.__name__} must declare exactly one column with PrimaryKey(); found {len(keys)}"
            )
        self.primary_key: ColumnInfo = keys[0]
        self.key_index = self.column_index[self.primary_key.name]
        self.non_key_columns = tuple(n for n in self.column_names if n != self.primary_key.name)
        """Every column but the primary key (an insert whose key the database generates)."""
        self.column_order: dict[tuple[str, ...], tuple[str, ...]] = {}
        """Column names as met (an update's changed columns) to the same names in table order;
        the planner's cache, so each row of a flush does not sort them again."""
        self.foreign_keys = tuple(c.foreign_key for c in columns if c.foreign_key is not None)
        self.unique_columns = tuple(c.name for c in columns if c.unique or c.primary_key)
        """The columns unique on their own: the primary key and each ``Unique()`` column."""
        self.unique_together = unique_together
        """The unique constraints over several columns (a model's ``constraints``)."""
        self.indexes_together = indexes_together
        """The indexes over several columns (a model's ``indexes``)."""
        self.shares_unique: dict[str, tuple[str, ...]] = {}
        """Column -> the other columns it shares a constraint of :attr:`unique_together`
        with: a change of it records their values too (``Updated.unchanged``)."""
        for constraint in unique_together:
            for column in constraint.columns:
                others = self.shares_unique.get(column, ())
                extra = tuple(c for c in constraint.columns if c != column and c not in others)
                self.shares_unique[column] = others + extra
        soft = [c.name for c in columns if c.soft_delete]
        version = [c.name for c in columns if c.version]
        if len(soft) > 1 or len(version) > 1:
            raise ModelDefinitionError(f"{model.__name__} declares more than one soft-delete or version column")
        self.soft_delete_column: str | None = soft[0] if soft else None
        self.version_column: str | None = version[0] if version else None
        self.relations = relations
        # the session reads every relation of every tracked object at flush: keep the
        # readers of the raw values at hand instead of looking the descriptors up on the class
        self.parent_relations: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (r.local_column, _class_getattribute(model, r.name).reader)
            for r in relations.values()
            if not r.many and r.local_column is not None
        )
        """(foreign-key column, reader of the parent object) per many-to-one relation."""
        self.child_relations: tuple[tuple[str, Callable[[Any], Any]], ...] = tuple(
            (r.remote_column, _class_getattribute(model, r.name).reader)
            for r in relations.values()
            if r.many and r.remote_column is not None
        )
        """(the children's foreign-key column, reader of the children) per one-to-many relation."""
        self.child_relation_names: tuple[str, ...] = tuple(
            r.name for r in relations.values() if r.many and r.remote_column is not None
        )
        """The names of the relations of :attr:`child_relations`, in the same order."""
        self.holds_relations: Callable[[Any], bool] = _relation_checker(
            [read for _, read in (*self.parent_relations, *self.child_relations)]
        )
        """Whether an object holds something (an object, a list, an assigned
        ``None``) in one of its relations: only then has a flush a relation of
        it to look at. Most loaded objects hold none."""
        self.mutable_indexes = tuple(i for i, c in enumerate(columns) if c.kind == "json")
        """Positions of the columns whose values may be changed in place (JSON:
        dicts, lists, structs). The session keeps its own copies of these in
        snapshots and events (:meth:`detached`), so a change made in place on
        the object is seen at flush and never reaches the journal unrecorded."""
        self.mutable_columns = frozenset(columns[i].name for i in self.mutable_indexes)
        self.required_indexes = tuple(i for i, c in enumerate(columns) if not c.nullable and not c.generated)
        """Positions of the columns a new row must not leave ``None``."""
        self.value_types: tuple[frozenset[type], ...] = tuple(map(_exact_value_types, columns))
        """Per column, the types a value may have as it is (its class exactly:
        no ``bool`` for an ``int``); any other value is checked, and converted
        where it can be, before it is written."""
        self.typed_as_stored: Callable[[Sequence[Any]], bool] = _type_checker(columns, self.value_types)
        """Whether every value of a row (in column order) has one of its
        column's ``value_types``: the check every added or changed row passes."""
        getter = operator.attrgetter(*self.column_names)
        if len(self.column_names) == 1:
            self.values_of: Callable[[Any], tuple[Any, ...]] = lambda obj: (getter(obj),)
        else:
            self.values_of = getter
        self.from_row: Callable[[Sequence[Any]], Any] = _row_constructor(model, self.column_names)
        """A new model instance from a row in column order."""
        self.row_dict: Callable[[Sequence[Any]], dict[str, Any]] = _row_dict_maker(self.column_names)
        """Column name to value for a row in column order (a tuple)."""
        self.diff: Callable[[Sequence[Any], Sequence[Any]], tuple[dict[str, Any], dict[str, Any], bool]] = _diff_maker(
            self.column_names
        )
        """``diff(before, after)`` of two rows in column order: ``(old, new, kept)``,
        the columns whose values differ (``before`` and ``after`` values), and
        whether some column holds an equal value that is not the same object."""

    @property
    def key_column(self) -> str:
        """The primary-key column's name."""
        return self.primary_key.name

    def key_of(self, obj: Any) -> Any:
        """The primary-key value of ``obj`` (``None`` before a generated key exists)."""
        return getattr(obj, self.primary_key.name)

    def unchanged_partners(self, row: Sequence[Any], changed: Mapping[str, Any]) -> dict[str, Any] | None:
        """The values in ``row`` (column order) of the columns that share a
        constraint of :attr:`unique_together` with a ``changed`` column and are
        not changed themselves; ``None`` when there are none. The planner needs
        them to know the whole value a change gives up and takes."""
        partners: dict[str, Any] | None = None
        shares = self.shares_unique
        for column in changed:
            for other in shares.get(column, ()):
                if other not in changed:
                    if partners is None:
                        partners = {}
                    partners[other] = row[self.column_index[other]]
        return partners

    def detached(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """``row`` (in column order) with a copy of each value of a column in
        :attr:`mutable_indexes`, shared with nothing else."""
        copied = list(row)
        for index in self.mutable_indexes:
            copied[index] = detached_value(copied[index])
        return tuple(copied)

    def __repr__(self) -> str:
        return f"<TableInfo {self.name} ({self.model.__name__})>"


_IMMUTABLE_VALUES = frozenset(
    {type(None), bool, int, float, str, bytes, decimal.Decimal, uuid.UUID, dt.datetime, dt.date, dt.time}
)


def detached_value(value: Any) -> Any:
    """A deep copy of a value that can be changed in place (a JSON column's
    dict, list or struct); an immutable value as it is."""
    kind = type(value)
    if kind in _IMMUTABLE_VALUES:
        return value
    # JSON is mostly dicts and lists: copied here, several times faster than deepcopy
    if kind is dict:
        return {key: detached_value(item) for key, item in value.items()}
    if kind is list:
        return [detached_value(item) for item in value]
    return copy.deepcopy(value)


def converted_value(table: TableInfo, column: ColumnInfo, value: Any) -> Any:
    """``value`` as ``column``'s Python type, strictly (no ``"7"`` for an
    ``int``); :class:`ValidationError` naming the column when it does not fit."""
    if type(value) is column.python_type:  # a member of a plain Enum of ints, which convert refuses
        converted = value
    elif type(value) is float and column.python_type is decimal.Decimal:
        # msgspec takes it, but 0.1 + 0.2 would be stored as 0.30000000000000004
        raise ValidationError(
            f"{table.model.__name__}.{column.name}: a float is not an exact decimal (got {value!r}); "
            "give a Decimal, such as Decimal(str(value)), or an int"
        )
    else:
        try:
            converted = msgspec.convert(value, column.python_type, strict=True)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"{table.model.__name__}.{column.name}: {exc} (got {value!r})") from None
    if is_nan(converted):
        raise ValidationError(
            f"{table.model.__name__}.{column.name}: NaN is not a value databases agree on "
            "(SQLite refuses it, PostgreSQL orders it above every number); store None instead"
        )
    if type(converted) is str and "\x00" in converted:
        raise ValidationError(
            f"{table.model.__name__}.{column.name}: text with a NUL character is not a value databases agree "
            f"on (PostgreSQL refuses it, SQLite's pattern matching stops at it); got {converted!r}"
        )
    return converted


def is_nan(value: Any) -> bool:
    """Whether ``value`` is a float or Decimal NaN (which a column refuses)."""
    if type(value) is float:
        return value != value
    return isinstance(value, decimal.Decimal) and value.is_nan()


def _exact_value_types(column: ColumnInfo) -> frozenset[type]:
    python_type = column.python_type
    if python_type is Any:
        return frozenset({object})  # anything: the column's JSON encoding is its only check
    origin = get_origin(python_type)
    accepted: set[type] = set()
    if isinstance(python_type, type):
        accepted.add(python_type)
    elif isinstance(origin, type):  # dict[str, Any] holds a dict
        accepted.add(origin)
    if column.nullable or column.generated:
        accepted.add(type(None))
    return frozenset(accepted)


def _type_checker(
    columns: Sequence[ColumnInfo], value_types: tuple[frozenset[type], ...]
) -> Callable[[Sequence[Any]], bool]:
    # generated, like from_row: one test per column in straight-line code is
    # several times cheaper than a loop over the columns
    names = [f"c{i}" for i in range(len(value_types))]
    namespace: dict[str, Any] = {}
    tests = []
    for i, (name, accepted, column) in enumerate(zip(names, value_types, columns)):
        if object in accepted:
            tests.append("True")
            continue
        classes = [t for t in accepted if t is not type(None)]
        test = " or ".join(f"type({name}) is t{i}_{k}" for k in range(len(classes))) or "False"
        namespace.update({f"t{i}_{k}": t for k, t in enumerate(classes)})
        if get_origin(column.python_type) is Literal:  # one of the values, each of its own type
            allowed = get_args(column.python_type)
            namespace[f"l{i}"] = frozenset((type(v), v) for v in allowed)
            test = f"(type({name}), {name}) in l{i}"
        if column.kind in ("float", "decimal"):  # and no NaN, which converted_value refuses
            namespace["is_nan"] = is_nan
            test = f"({test}) and not is_nan({name})"
        elif column.python_type is str:  # and no NUL, which converted_value refuses
            test = f"({test}) and '\\x00' not in {name}"
        if type(None) in accepted:
            test = f"{name} is None or {test}"
        tests.append(f"({test})")
    unpack = ", ".join(names) + ("," if len(names) == 1 else "")
    exec(f"def typed_as_stored(row):\n    {unpack} = row\n    return {' and '.join(tests)}\n", namespace)
    return namespace["typed_as_stored"]  # type: ignore[no-any-return]


def _relation_checker(readers: Sequence[Callable[[Any], Any]]) -> Callable[[Any], bool]:
    # generated, like typed_as_stored: the flush asks this of every tracked object
    namespace: dict[str, Any] = {"NOT_LOADED": NOT_LOADED}
    lines = ["def holds_relations(obj):"]
    for i, read in enumerate(readers):
        namespace[f"r{i}"] = read
        lines.append(f"    v = r{i}(obj)")
        lines.append("    if v is not NOT_LOADED and v is not None:")
        lines.append("        return True")
    lines.append("    return False")
    exec("\n".join(lines) + "\n", namespace)
    return namespace["holds_relations"]  # type: ignore[no-any-return]


def _row_constructor(model: type[Model], column_names: tuple[str, ...]) -> Callable[[Sequence[Any]], Any]:
    """``lambda row: model(a=row[0], b=row[1], ...)``, written out once per model.

    Loading rows builds one object per row; spelling the keywords out runs the
    model's own ``__init__`` (defaults, ``__post_init__``) about twice as fast
    as ``model(**dict(zip(column_names, row)))``. The names are the model's
    field names, so they are identifiers.

    When ``__init__`` would do nothing but store the values (no
    ``__post_init__``, and every other field's default is a value that can be
    shared), each object is a copy of one prototype with every column
    replaced, through ``msgspec.structs.replace``: on Python 3.11 a call of a
    class whose metaclass is written in Python (``ModelMeta``) takes CPython's
    generic path, 0.6 µs per object, against 0.17 µs for ``replace``.
    """
    arguments = ", ".join(f"{name}=row[{index}]" for index, name in enumerate(column_names))
    namespace: dict[str, Any] = {"model": model}
    prototype = _prototype(model, column_names)
    if prototype is not None:
        namespace.update(replace=msgspec.structs.replace, prototype=prototype)
        exec(f"def from_row(row):\n    return replace(prototype, {arguments})\n", namespace)
    else:
        exec(f"def from_row(row):\n    return model({arguments})\n", namespace)
    return namespace["from_row"]  # type: ignore[no-any-return]


_SHAREABLE = (type(None), bool, int, float, str, bytes, decimal.Decimal, uuid.UUID, dt.date, dt.time, dt.datetime)


def _prototype(model: type[Model], column_names: tuple[str, ...]) -> Any:
    """An instance to copy for new rows, or ``None`` when a copy could differ
    from what ``__init__`` makes (a ``__post_init__`` to run, or a default that
    ``__init__`` makes afresh or that objects must not share)."""
    if any("__post_init__" in vars(cls) for cls in model.__mro__):
        return None
    for field in msgspec.structs.fields(model):
        if field.name in column_names:
            continue
        if field.default_factory is not msgspec.NODEFAULT:
            return None
        if field.default is not NOT_LOADED and type(field.default) not in _SHAREABLE:
            return None
    return model(**dict.fromkeys(column_names))


def _row_dict_maker(column_names: tuple[str, ...]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """``lambda row: {"a": row[0], "b": row[1], ...}``, written out once per table.

    Every insert and delete records a whole row as a dict; a dict display is
    about twice as fast as ``dict(zip(column_names, row))``.
    """
    items = ", ".join(f"{name!r}: row[{index}]" for index, name in enumerate(column_names))
    namespace: dict[str, Any] = {}
    exec(f"def row_dict(row):\n    return {{{items}}}\n", namespace)
    return namespace["row_dict"]  # type: ignore[no-any-return]


def _diff_maker(
    column_names: tuple[str, ...],
) -> Callable[[Sequence[Any], Sequence[Any]], tuple[dict[str, Any], dict[str, Any], bool]]:
    """The comparison of two rows column by column, written out once per table.

    Change collection compares every changed row with its snapshot; the
    written-out comparisons take about half the time of a loop over
    ``zip(column_names, before, after)``.
    """
    lines = ["def diff(before, after):", "    old = {}", "    new = {}", "    kept = False"]
    for index, name in enumerate(column_names):
        lines += [
            f"    b = before[{index}]",
            f"    a = after[{index}]",
            "    if b is not a:",
            "        if b != a:",
            f"            old[{name!r}] = b",
            f"            new[{name!r}] = a",
            "        else:",
            "            kept = True",
        ]
    lines.append("    return old, new, kept")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines) + "\n", namespace)
    return namespace["diff"]  # type: ignore[no-any-return]


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is an instance of a mapped model."""
    return isinstance(obj, Model) and _class_getattribute(type(obj), "__uow_table_name__") is not None


def table_info(model: type[Any]) -> TableInfo:
    """The :class:`TableInfo` of a model class, built on first use."""
    # read past ModelMeta.__getattribute__: this runs on every session call
    info = _class_getattribute(model, "__uow_table__") if isinstance(model, ModelMeta) else None
    if info is not None:
        return info  # type: ignore[no-any-return]
    if not isinstance(model, ModelMeta) or model.__uow_table_name__ is None:
        raise ModelDefinitionError(f"{model!r} is not a model with a table (declare it with table='...')")
    info = _build_table_info(model)
    type.__setattr__(model, "__uow_table__", info)
    return info


def resolve_model(target: type[Model] | str, *, near: type[Model] | None = None) -> type[Model]:
    """Find a model by class, class name or table name."""
    if isinstance(target, type):
        return target
    if near is not None:
        module = sys.modules.get(near.__module__)
        candidate = getattr(module, target, None) if module else None
        if isinstance(candidate, ModelMeta):
            return candidate  # type: ignore[return-value]
        if near.__name__ == target or near.__uow_table_name__ == target:
            return near
    if target in _REGISTRY:
        return _REGISTRY[target]
    raise ModelDefinitionError(f"no model named {target!r} (a class name or table name) is defined")


_KINDS: tuple[tuple[type, ColumnKind], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "text"),
    (bytes, "bytes"),
    (dt.datetime, "datetime"),
    (dt.date, "date"),
    (dt.time, "time"),
    (decimal.Decimal, "decimal"),
    (uuid.UUID, "uuid"),
)


def _stored_kind(model: type, field: str, values: Sequence[Any], what: str) -> ColumnKind:
    """The kind of a column holding an enum's values or a Literal's: all
    integers or all strings, as a database column holds one type."""
    if all(isinstance(v, int) for v in values):
        return "integer"
    if all(isinstance(v, str) for v in values):
        return "text"
    raise ModelDefinitionError(
        f"{model.__name__}.{field}: {what} mixes values of several types "
        f"({', '.join(sorted({type(v).__name__ for v in values}))}); a column stores one: all int or all str"
    )


def _column_kind(model: type, field: str, python_type: Any) -> ColumnKind:
    if isinstance(python_type, type):
        if issubclass(python_type, enum.Enum):
            if issubclass(python_type, int):
                return "integer"
            return _stored_kind(model, field, [member.value for member in python_type], python_type.__name__)
        for base, kind in _KINDS:
            if issubclass(python_type, base):
                return kind
        if issubclass(python_type, (dict, list, tuple, msgspec.Struct)):
            return "json"
    origin = get_origin(python_type)
    if origin in (dict, list, tuple) or origin is Literal:
        if origin is Literal:
            return _stored_kind(model, field, get_args(python_type), "the Literal")
        return "json"
    if python_type is Any:
        return "json"
    raise ModelDefinitionError(f"{model.__name__}.{field}: cannot store values of type {python_type!r}")


def _split_annotation(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(type without None, Annotated metadata, whether None is allowed)."""
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        args = get_args(annotation)
        annotation, metadata = args[0], [*metadata, *args[1:]]
    nullable = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(members) != len(get_args(annotation))
        annotation = members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007
        while get_origin(annotation) is Annotated:
            args = get_args(annotation)
            annotation, metadata = args[0], [*metadata, *args[1:]]
    elif annotation is type(None):
        nullable = True
    return annotation, metadata, nullable


def _build_table_info(model: type[Model]) -> TableInfo:
    try:
        hints = typing.get_type_hints(model, include_extras=True)
    except NameError as exc:
        raise ModelDefinitionError(f"{model.__name__}: cannot resolve an annotation ({exc})") from exc
    relation_names = _relation_names(model)
    columns: list[ColumnInfo] = []
    for field in model.__struct_fields__:
        if field in relation_names:
            continue
        python_type, metadata, nullable = _split_annotation(hints[field])
        pk = next((m for m in metadata if isinstance(m, PrimaryKey)), None)
        fk = next((m for m in metadata if isinstance(m, ForeignKey)), None)
        generated = False
        if pk is not None:
            generated = pk.generated if pk.generated is not None else (nullable and python_type is int)
        fk_info = None
        if fk is not None:
            target = resolve_model(fk.target, near=model)
            target_name = target.__uow_table_name__
            if target_name is None:
                raise ModelDefinitionError(f"{model.__name__}.{field}: {target.__name__} is not a model with a table")
            # only the target's key column is needed: building the target's whole
            # TableInfo here would recurse forever when two tables reference each other
            target_hints = hints if target is model else typing.get_type_hints(target, include_extras=True)
            target_column = next(
                (
                    f
                    for f in target.__struct_fields__
                    if any(isinstance(m, PrimaryKey) for m in _split_annotation(target_hints[f])[1])
                ),
                None,
            )
            if target_column is None:
                raise ModelDefinitionError(f"{model.__name__}.{field}: {target.__name__} declares no PrimaryKey()")
            fk_info = ForeignKeyInfo(field, target_name, target_column, fk.on_delete)
            if fk.on_delete == "set null" and not nullable:
                raise ModelDefinitionError(f"{model.__name__}.{field}: on_delete='set null' needs a nullable column")
        if any(isinstance(m, (Unique, Index)) and (m.columns or m.name is not None) for m in metadata):
            raise ModelDefinitionError(
                f"{model.__name__}.{field}: Unique() or Index() on a column takes no columns and no name; a "
                "named one, or one over several columns, goes in the model's constraints=[Unique(...)] or "
                "indexes=[Index(...)]"
            )
        columns.append(
            ColumnInfo(
                name=field,
                python_type=python_type,
                kind=_column_kind(model, field, python_type),
                nullable=nullable and pk is None,
                primary_key=pk is not None,
                generated=generated,
                unique=any(isinstance(m, Unique) for m in metadata),
                indexed=any(isinstance(m, Index) for m in metadata),
                foreign_key=fk_info,
                soft_delete=any(isinstance(m, SoftDeleteColumn) for m in metadata),
                version=any(isinstance(m, VersionColumn) for m in metadata),
            )
        )
    relations: dict[str, RelationInfo] = {}
    for name in relation_names:
        descriptor: RelationDescriptor = getattr(model, name)
        target_type, _, _ = _split_annotation(hints[name])
        many = get_origin(target_type) in (list, tuple)
        if many:
            target_type = get_args(target_type)[0]
            if isinstance(target_type, typing.ForwardRef):
                target_type = target_type.__forward_arg__
        if isinstance(target_type, str):
            target_type = resolve_model(target_type, near=model)
        spec = descriptor.spec
        if many and spec.back is None:
            raise ModelDefinitionError(
                f"{model.__name__}.{name}: a one-to-many relation needs relation(back='<column on "
                f"{getattr(target_type, '__name__', target_type)}>')"
            )
        if not many and spec.via is None:
            raise ModelDefinitionError(f"{model.__name__}.{name}: a many-to-one relation needs relation('<column>')")
        if not many and spec.via not in model.__struct_fields__:
            raise ModelDefinitionError(f"{model.__name__}.{name}: relation column {spec.via!r} is not a field")
        if not many:
            _check_via_column(model, name, target_type, spec.via, columns)
        if spec.delete_orphans and not many:
            raise ModelDefinitionError(
                f"{model.__name__}.{name}: delete_orphans is for a one-to-many relation (a list of children)"
            )
        if many:
            _check_back_column(model, name, target_type, spec.back, hints)
        relations[name] = RelationInfo(name, target_type, many, spec.via, spec.back, spec.delete_orphans)
    for name in (model.__uow_table_name__ or "", *(column.name for column in columns)):
        if len(name.encode()) > _MAX_NAME:  # PostgreSQL would cut it, and two names could become one
            raise ModelDefinitionError(
                f"{model.__name__}: the name {name!r} is longer than {_MAX_NAME} bytes, the longest a "
                "database keeps whole; use a shorter one"
            )
    table_name = model.__uow_table_name__ or ""
    unique_together, indexes_together = _together(model, table_name, columns)
    return TableInfo(model, table_name, tuple(columns), relations, unique_together, indexes_together)


_MAX_NAME = 63
"""The longest table or column name PostgreSQL keeps, in bytes."""


def fitted_name(name: str) -> str:
    """``name`` when it fits in 63 bytes, else cut with a digest of the whole
    appended: PostgreSQL cuts longer names, which could then collide silently."""
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    head = name.encode()[: _MAX_NAME - len(digest) - 1].decode(errors="ignore")
    return f"{head}_{digest}"


def _together(
    model: type[Model], table: str, columns: list[ColumnInfo]
) -> tuple[tuple[UniqueInfo, ...], tuple[IndexInfo, ...]]:
    """The model's ``constraints`` and ``indexes``, checked: each a
    :class:`Unique` (or :class:`Index`) over two or more distinct columns
    that can be compared, none listing the columns of another of its kind,
    each named apart from every other constraint and index of the table."""
    kinds = {column.name: column.kind for column in columns}
    # the names the table's other constraints and indexes take, as create_all makes them
    taken = {f"{table}_pkey"}
    for info in columns:
        if info.unique and not info.primary_key:
            taken.add(f"{table}_{info.name}_key")
        if info.foreign_key is not None:
            taken.add(f"{table}_{info.name}_fkey")
        if info.indexed or (info.foreign_key is not None and not info.unique):
            taken.add(fitted_name(f"ix_{table}__{info.name}"))
    unique = [
        UniqueInfo(name, named)
        for name, named in _checked_together(
            model, kinds, taken, _class_getattribute(model, "__uow_constraints__"), Unique, "constraints"
        )
    ]
    indexes = [
        IndexInfo(name, named)
        for name, named in _checked_together(
            model, kinds, taken, _class_getattribute(model, "__uow_indexes__"), Index, "indexes"
        )
    ]
    return tuple(unique), tuple(indexes)


def _checked_together(
    model: type[Model],
    kinds: Mapping[str, ColumnKind],
    taken: set[str],
    declared: Sequence[Any],
    kind: type[Unique] | type[Index],
    option: str,
) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, columns)`` of each of ``declared`` (a model's ``constraints``
    or ``indexes``), checked; each name joins ``taken``."""
    found: list[tuple[str, tuple[str, ...]]] = []
    seen: set[frozenset[str]] = set()
    for declaration in declared:
        if not isinstance(declaration, kind):
            raise ModelDefinitionError(
                f"{model.__name__}: {option} takes {kind.__name__}(column, column, ...), not {declaration!r}"
            )
        named = declaration.columns
        if len(named) < 2:
            raise ModelDefinitionError(
                f"{model.__name__}: {declaration!r} names {len(named)} column(s); one in {option} spans two "
                f"or more (one column takes {kind.__name__}() in its annotation)"
            )
        for column in named:
            if not isinstance(column, str) or column not in kinds:
                raise ModelDefinitionError(
                    f"{model.__name__}: {declaration!r} names {column!r}, which is not a column; "
                    f"columns: {', '.join(kinds)}"
                )
            if kinds[column] == "json":
                raise ModelDefinitionError(
                    f"{model.__name__}: {declaration!r} names the JSON column {column!r}: databases compare "
                    "JSON values each their own way"
                )
        if len(set(named)) != len(named):
            raise ModelDefinitionError(f"{model.__name__}: {declaration!r} names a column twice")
        if frozenset(named) in seen:
            raise ModelDefinitionError(f"{model.__name__}: {declaration!r} repeats the columns of another one")
        seen.add(frozenset(named))
        if declaration.name is not None:
            if not isinstance(declaration.name, str) or not declaration.name:
                raise ModelDefinitionError(f"{model.__name__}: {declaration!r} needs a name that is a string")
            if len(declaration.name.encode()) > _MAX_NAME:
                raise ModelDefinitionError(
                    f"{model.__name__}: the name {declaration.name!r} is longer than {_MAX_NAME} "
                    "bytes, the longest a database keeps whole; use a shorter one"
                )
        table = model.__uow_table_name__
        default = f"{table}_{'_'.join(named)}_key" if kind is Unique else f"ix_{table}__{'_'.join(named)}"
        name = declaration.name or fitted_name(default)
        if name in taken:
            raise ModelDefinitionError(
                f"{model.__name__}: {declaration!r} would be named {name!r}, which another constraint or index "
                "of the table takes; give it another name=..."
            )
        taken.add(name)
        found.append((name, tuple(named)))
    return found


def _check_via_column(model: type[Model], name: str, target: Any, via: Any, columns: list[ColumnInfo]) -> None:
    """Refuse a many-to-one relation ``model.name`` whose column ``via`` is not
    a foreign key to ``target``'s table (the session writes the parent's key
    into it)."""
    where = f"{model.__name__}.{name}: relation({via!r})"
    if not isinstance(target, ModelMeta) or _class_getattribute(target, "__uow_table_name__") is None:
        raise ModelDefinitionError(f"{where}: a many-to-one relation holds a model with a table, not {target!r}")
    column = next((c for c in columns if c.name == via), None)
    if column is None:
        raise ModelDefinitionError(f"{where}: {via!r} is a relation, not a column of {model.__name__}")
    target_table = _class_getattribute(target, "__uow_table_name__")
    if column.foreign_key is None:
        raise ModelDefinitionError(
            f"{where}: {model.__name__}.{via} is not a foreign key; declare it "
            f"Annotated[..., ForeignKey({target.__name__})]"
        )
    if column.foreign_key.target_table != target_table:
        raise ModelDefinitionError(
            f"{where}: {model.__name__}.{via} is a foreign key to table {column.foreign_key.target_table!r}, "
            f"not to {target.__name__} (table {target_table!r})"
        )


def _relation_names(model: type[Any]) -> set[str]:
    """The names of the relation attributes of ``model`` (its own and its bases')."""
    names = {name for name in model.__struct_fields__ if isinstance(model.__dict__.get(name), RelationDescriptor)}
    for klass in model.__mro__:
        names.update(n for n, v in klass.__dict__.items() if isinstance(v, RelationDescriptor))
    return names


def _check_back_column(model: type[Model], name: str, target: Any, back: Any, hints: dict[str, Any]) -> None:
    """Refuse a one-to-many relation ``model.name`` whose ``back`` is not a
    column of ``target`` holding a foreign key to ``model``'s table.

    Checked when ``model``'s mapping is built, not when the class is made: the
    target may be defined after it. Only ``target``'s annotations are read, not
    its whole :class:`TableInfo`: building that here would recurse forever
    when two models hold lists of each other (or a model a list of its own)."""
    where = f"{model.__name__}.{name}: relation(back={back!r})"
    if not isinstance(target, ModelMeta) or _class_getattribute(target, "__uow_table_name__") is None:
        raise ModelDefinitionError(
            f"{model.__name__}.{name}: a one-to-many relation holds a list of a model with a table, not of {target!r}"
        )
    columns = [f for f in target.__struct_fields__ if f not in _relation_names(target)]
    if back not in columns:
        what = "is a relation, not a column" if back in target.__struct_fields__ else "is not a column"
        raise ModelDefinitionError(
            f"{where}: {back!r} {what} of {target.__name__}; name the column of {target.__name__} that "
            f"references {model.__name__} (columns: {', '.join(columns)})"
        )
    if target is model:
        target_hints = hints
    else:
        try:
            target_hints = typing.get_type_hints(target, include_extras=True)
        except NameError as exc:
            raise ModelDefinitionError(f"{target.__name__}: cannot resolve an annotation ({exc})") from exc
    fk = next((m for m in _split_annotation(target_hints[back])[1] if isinstance(m, ForeignKey)), None)
    if fk is None:
        raise ModelDefinitionError(
            f"{where}: {target.__name__}.{back} is not a foreign key; declare it "
            f"Annotated[..., ForeignKey({model.__name__})]"
        )
    referenced = resolve_model(fk.target, near=target)
    owner_table = _class_getattribute(model, "__uow_table_name__")
    referenced_table = _class_getattribute(referenced, "__uow_table_name__")
    if referenced_table != owner_table:
        raise ModelDefinitionError(
            f"{where}: {target.__name__}.{back} is a foreign key to {referenced.__name__} "
            f"(table {referenced_table!r}), not to {model.__name__} (table {owner_table!r})"
        )


def model_tables(models: Mapping[str, type[Model]] | list[type[Model]]) -> list[TableInfo]:
    """TableInfo for each model, parents before children where foreign keys allow."""
    infos = [table_info(m) for m in (models.values() if isinstance(models, Mapping) else models)]
    by_name = {i.name: i for i in infos}
    ordered: list[TableInfo] = []
    seen: set[str] = set()

    def visit(info: TableInfo, stack: frozenset[str]) -> None:
        if info.name in seen:
            return
        for fk in info.foreign_keys:
            parent = by_name.get(fk.target_table)
            if parent is not None and parent.name not in stack and parent is not info:
                visit(parent, stack | {info.name})
        seen.add(info.name)
        ordered.append(info)

    for info in infos:
        visit(info, frozenset({info.name}))
    return ordered


__all__ = [
    "NOT_LOADED",
    "UNLINKED",
    "ColumnInfo",
    "ColumnKind",
    "ForeignKey",
    "ForeignKeyInfo",
    "Index",
    "IndexInfo",
    "Model",
    "ModelMeta",
    "PrimaryKey",
    "RelationDescriptor",
    "RelationInfo",
    "SoftDelete",
    "SoftDeleteColumn",
    "TableInfo",
    "Unique",
    "UniqueInfo",
    "VersionColumn",
    "Versioned",
    "is_model",
    "filled_by_relation",
    "fitted_name",
    "is_nan",
    "relation",
    "resolve_model",
    "table_info",
]
