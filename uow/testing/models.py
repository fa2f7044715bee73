"""The models the conformance suite (:mod:`uow.testing.conformance`) runs on.

They cover what a storage adapter has to get right: generated and given
primary keys, unique columns and a unique constraint over two columns,
foreign keys with ``cascade`` (one of them NOT NULL) and ``set null``, a
self reference, optimistic locking (:class:`~uow.model.Versioned`), soft
delete (:class:`~uow.model.SoftDelete`) and every column kind. Table names
start with ``conformance_`` so they do not clash with an application's tables.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Annotated, Any

import msgspec

from uow.model import (
    ForeignKey,
    Index,
    Model,
    PrimaryKey,
    SoftDelete,
    Unique,
    Versioned,
    filled_by_relation,
    relation,
)


class User(Model, table="conformance_users", kw_only=True):
    """A user; ``email`` is unique, ``posts`` lists the user's posts when loaded or set."""

    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    email: Annotated[str, Unique()]
    age: int = 0
    posts: list[Post] = relation(back="author_id")


class Post(Model, table="conformance_posts", kw_only=True):
    """A post; deleted with its author, ``slug`` unique when set."""

    id: Annotated[int | None, PrimaryKey()] = None
    author_id: Annotated[int | None, ForeignKey(User, on_delete="cascade")] = None
    title: str
    slug: Annotated[str | None, Unique()] = None
    author: User | None = relation("author_id")


class Comment(Model, table="conformance_comments", kw_only=True):
    """A comment that cannot exist without its post: the foreign key is NOT
    NULL, filled from the ``post`` relation (``None`` until then)."""

    id: Annotated[int | None, PrimaryKey()] = None
    post_id: Annotated[int, ForeignKey(Post, on_delete="cascade")] = filled_by_relation()
    body: str
    post: Post | None = relation("post_id")


class Review(Model, table="conformance_reviews", kw_only=True):
    """A review that outlives its reviewer: the reference is set to null."""

    id: Annotated[int | None, PrimaryKey()] = None
    reviewer_id: Annotated[int | None, ForeignKey(User, on_delete="set null")] = None
    stars: int = 0
    reviewer: User | None = relation("reviewer_id")


class Category(Model, table="conformance_categories", kw_only=True):
    """A tree: each category may have a parent category, deleted with it."""

    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    parent_id: Annotated[int | None, ForeignKey("Category", on_delete="cascade")] = None
    parent: Category | None = relation("parent_id")


class Employee(Model, table="conformance_employees", kw_only=True):
    """Works in a department, whose head is an employee: two tables whose
    foreign keys point at each other (not in :data:`MODELS`: the tests that
    need them create them)."""

    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    department_id: Annotated[int, ForeignKey("Department")] = filled_by_relation()
    department: Department | None = relation("department_id")


class Department(Model, table="conformance_departments", kw_only=True):
    id: Annotated[int | None, PrimaryKey()] = None
    name: str
    head_id: Annotated[int | None, ForeignKey(Employee)] = None
    head: Employee | None = relation("head_id")


class Seat(
    Model,
    table="conformance_seats",
    kw_only=True,
    constraints=[Unique("holder_id", "number")],
    indexes=[Index("label", "number")],
):
    """A seat numbered per holder: ``holder_id`` and ``number`` are unique
    together, and a seat without a holder clashes with none; ``label`` and
    ``number`` are indexed together (not in :data:`MODELS`: the tests that
    need it create it)."""

    id: Annotated[int | None, PrimaryKey()] = None
    holder_id: Annotated[int | None, ForeignKey(User, on_delete="cascade")] = None
    number: int
    label: str = ""
    holder: User | None = relation("holder_id")


class Account(Model, Versioned, table="conformance_accounts", kw_only=True):
    """An account under optimistic locking (``version``)."""

    id: Annotated[int | None, PrimaryKey()] = None
    owner: str
    balance: int = 0


class Note(Model, SoftDelete, table="conformance_notes", kw_only=True):
    """A note that is hidden (``deleted_at``) rather than deleted."""

    id: Annotated[int | None, PrimaryKey()] = None
    text: str


class Color(enum.Enum):
    """A text enum column."""

    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Size(msgspec.Struct):
    """A JSON value with a shape of its own."""

    width: int
    height: int


class Sample(Model, table="conformance_samples", kw_only=True):
    """One column of every kind, keyed by a given (not generated) UUID; JSON
    values typed as a dict, a tuple and a struct come back as such."""

    id: Annotated[uuid.UUID, PrimaryKey()]
    created_at: dt.datetime
    day: dt.date
    amount: decimal.Decimal
    flag: bool
    ratio: float
    blob: bytes
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    color: Color = Color.RED
    label: str | None = None
    count: int | None = None
    shape: tuple[int, ...] = ()
    size: Size | None = None


MODELS: tuple[type[Model], ...] = (User, Post, Comment, Review, Category, Account, Note, Sample)
"""Every model of the suite, parents first."""

__all__ = [
    "MODELS",
    "Account",
    "Category",
    "Color",
    "Comment",
    "Department",
    "Employee",
    "Note",
    "Post",
    "Review",
    "Sample",
    "Seat",
    "Size",
    "User",
]
