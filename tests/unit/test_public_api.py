"""The public surface: what ``signed_bus`` and ``signed_bus.errors`` export, the error tree and
its reason codes, and that README.md and docs/ only show imports that exist (no services)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import signed_bus
from signed_bus import errors

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

#: The exact public names. Adding or removing one is an API change: update this list and
#: CHANGELOG.md together.
PUBLIC = {
    # signing core
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_MSGPACK",
    "EDDSA",
    "HS256",
    "TAG",
    "Ed25519Key",
    "ExternalKey",
    "Freshness",
    "HmacKey",
    "Key",
    "KeySource",
    "Keyring",
    "Signer",
    "VerifiedMessage",
    "Verifier",
    "envelope_digest",
    "generate_ed25519_key",
    "generate_hmac_key",
    "load_keyring",
    # Kafka
    "Backoff",
    "ConsumedBatch",
    "ConsumedMessage",
    "ConsumerOptions",
    "Outgoing",
    "Output",
    "ProducerOptions",
    "Relay",
    "SignedProducer",
    "VerifyingConsumer",
    "create_topics",
    # replay guard
    "Claim",
    "ClaimVerdict",
    "RebuildSource",
    "RedisReplayGuard",
    "estimate_memory_bytes",
    "recommended_shards",
    # dead letters
    "DeadLetter",
    # payloads
    "encode_payload",
    "payload_as",
    # provenance
    "Position",
    "ProvenanceIndex",
    "RecordFetcher",
    "TraceLink",
    "TraceReport",
    "Tracer",
    # text
    "printable",
    # errors: the roots only
    "ConfigurationError",
    "ReplayGuardUnavailable",
    "SignedBusError",
    "Stopped",
    "VerificationError",
    "__version__",
}

ERROR_ROOTS = {
    "ConfigurationError",
    "ReplayGuardUnavailable",
    "SignedBusError",
    "Stopped",
    "VerificationError",
}

#: Exception classes that may live outside errors.py: private control-flow signals, each caught
#: inside the library by the one caller that raises it, so no user ever sees one.
#: PayloadError: the body profiles -> VerifiedMessage.payload, which raises MalformedEnvelope.
#: _DuplicateMember: the key-file JSON hook -> the key-file loader (ConfigurationError).
#: UsageError: a CLI command -> the CLI's main (exit status 2).
#: Unreachable: a CLI command -> the CLI's main (exit status 3).
INTERNAL_SIGNALS = {"PayloadError", "_DuplicateMember", "UsageError", "Unreachable"}

#: Module paths an example may import from (the optional integrations import their library).
PUBLIC_MODULES = {
    "signed_bus": signed_bus,
    "signed_bus.errors": errors,
    "signed_bus.otel": importlib.import_module("signed_bus.otel"),
    "signed_bus.prometheus": importlib.import_module("signed_bus.prometheus"),
    "signed_bus.confluent": importlib.import_module("signed_bus.confluent"),
    "signed_bus.faststream": importlib.import_module("signed_bus.faststream"),
}


def _exported(module: ModuleType) -> dict[str, object]:
    return {name: getattr(module, name) for name in module.__all__}


def _own_docstring(obj: object) -> str:
    """The docstring written for ``obj``, not one generated or inherited: dataclasses and named
    tuples make up ``Name(field, ...)`` when a class has none."""
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if doc.startswith(f"{obj.__name__}("):
            return ""
        return str(doc).strip()
    return (getattr(obj, "__doc__", None) or "").strip()


def _error_classes() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }


def _reason_classes() -> dict[str, type[errors.VerificationError]]:
    return {
        name: cls
        for name, cls in _error_classes().items()
        if issubclass(cls, errors.VerificationError)
    }


# -- signed_bus ---------------------------------------------------------------------------------


def test_public_names_are_exactly_the_pinned_list() -> None:
    assert len(signed_bus.__all__) == len(set(signed_bus.__all__)), "a name is listed twice"
    assert set(signed_bus.__all__) == PUBLIC


def test_the_changelog_counts_the_public_names() -> None:
    # The "Public API" paragraph quotes how many names `__all__` holds; it went stale twice.
    counts = re.findall(r"\((\d+) names, grouped", (ROOT / "CHANGELOG.md").read_text())
    assert counts == [str(len(signed_bus.__all__))]


def test_every_public_name_resolves() -> None:
    namespace: dict[str, object] = {}
    exec("from signed_bus import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(signed_bus.__all__)
    for name in signed_bus.__all__:
        assert namespace[name] is getattr(signed_bus, name)


@pytest.mark.parametrize("name", sorted(PUBLIC - {"__version__"}))
def test_every_exported_class_and_function_has_a_docstring(name: str) -> None:
    obj = getattr(signed_bus, name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        assert _own_docstring(obj), f"signed_bus.{name} has no docstring"


def test_only_the_error_roots_are_exported_at_top_level() -> None:
    exported_errors = {
        name
        for name, obj in _exported(signed_bus).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    }
    assert exported_errors == ERROR_ROOTS
    for name in ERROR_ROOTS:
        assert getattr(signed_bus, name) is getattr(errors, name)


def test_the_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", signed_bus.__version__)


def test_the_package_docstring_maps_every_exported_group() -> None:
    doc = signed_bus.__doc__ or ""
    for name in ("Signer", "Verifier", "VerifyingConsumer", "RedisReplayGuard", "DeadLetter"):
        assert f":class:`{name}`" in doc or f":meth:`{name}." in doc
    assert "signed_bus.errors" in doc


# -- signed_bus.errors --------------------------------------------------------------------------


def test_errors_exports_every_exception_class_it_defines() -> None:
    assert set(errors.__all__) == {*_error_classes(), "REASONS"}
    for name, cls in _error_classes().items():
        assert _own_docstring(cls), f"signed_bus.errors.{name} has no docstring"
        assert issubclass(cls, errors.SignedBusError)


def test_the_errors_docstring_draws_every_class() -> None:
    doc = errors.__doc__ or ""
    for name, cls in _error_classes().items():
        line = next((line for line in doc.splitlines() if re.search(rf"\b{name}\b", line)), None)
        assert line is not None, f"{name} is missing from the tree in errors.py's docstring"
        if issubclass(cls, errors.VerificationError) and cls is not errors.VerificationError:
            assert f"``{cls.reason}``" in line, f"{name}'s line does not show its reason"


def test_every_exception_class_of_the_library_lives_in_errors() -> None:
    misplaced = []
    for info in pkgutil.walk_packages(signed_bus.__path__, "signed_bus."):
        if info.name.startswith("signed_bus.bench"):  # the benchmark: not library code
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and module is not errors
                and name not in INTERNAL_SIGNALS
            ):
                misplaced.append(f"{module.__name__}.{name}")
    assert misplaced == []


def test_each_reason_code_belongs_to_exactly_one_class() -> None:
    owners: dict[str, list[str]] = {}
    for name, cls in _reason_classes().items():
        # set on the class itself: a subclass that inherited its parent's code would share it
        assert "reason" in cls.__dict__, f"{name} inherits its reason code"
        owners.setdefault(cls.reason, []).append(name)
    assert {reason: names for reason, names in owners.items() if len(names) > 1} == {}
    for reason in owners:
        assert re.fullmatch(r"[a-z0-9_]{1,64}", reason)  # what a dead-letter header may carry


def test_reasons_maps_every_code_the_library_raises_to_its_class() -> None:
    expected = {
        cls.reason: cls
        for cls in _reason_classes().values()
        if cls is not errors.VerificationError  # the base: never raised by signed-bus itself
    }
    assert dict(errors.REASONS) == expected


def test_the_dead_letter_reason_header_lists_every_code() -> None:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `signed-bus-reason` |"))
    assert set(re.findall(r"`([a-z0-9_]+)`", row)) - {"signed-bus-reason"} == set(errors.REASONS)


def test_every_reason_code_is_listed_in_envelope_md_with_its_class() -> None:
    text = (ROOT / "docs" / "ENVELOPE.md").read_text()
    listed = dict(re.findall(r"`([a-z0-9_]+)` \(`([A-Za-z]+)`", text))
    expected = {cls.reason: name for name, cls in _reason_classes().items()}
    assert listed == expected


# -- README.md and docs/ ------------------------------------------------------------------------


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    blocks, lines, start = [], path.read_text().splitlines(), None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines[start : number - 1])))
            start = None
    return blocks


def _doc_blocks() -> list[tuple[str, int, str]]:
    return [
        (str(path.relative_to(ROOT)), line, source)
        for path in DOCS
        for line, source in _python_blocks(path)
    ]


def test_the_docs_have_python_examples() -> None:
    assert len(_doc_blocks()) >= 5  # the extraction below found what it checks


@pytest.mark.parametrize(
    ("doc", "line", "source"),
    _doc_blocks(),
    ids=[f"{doc}:{line}" for doc, line, _ in _doc_blocks()],
)
def test_doc_examples_import_only_public_names(doc: str, line: int, source: str) -> None:
    tree = compile(
        source, f"{doc}:{line}", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    assert isinstance(tree, ast.Module)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("signed_bus"):
                    assert alias.name in PUBLIC_MODULES, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("signed_bus"):
            module = PUBLIC_MODULES.get(node.module or "")
            assert module is not None, f"from {node.module} import ... (a private module)"
            for alias in node.names:
                assert alias.name in module.__all__, (
                    f"{alias.name} is not exported by {node.module}"
                )


#: Logger names are public too (docs/OPERATIONS.md); they do not follow the private modules.
LOGGERS = {
    "signed_bus.consumer",
    "signed_bus.keys",
    "signed_bus.native",
    "signed_bus.provenance",
    "signed_bus.relay",
    "signed_bus.replay",
    "signed_bus.topics",
}


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_docs_name_only_public_objects(path: Path) -> None:
    """Prose names like ``signed_bus.X`` must point at something a user can import."""
    wrong = []
    for match in re.finditer(r"`(signed_bus(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", path.read_text()):
        dotted = match.group(1)
        parts = dotted.split(".")
        if dotted in LOGGERS or parts[1] in ("bench", "__all__"):  # bench: python -m ...
            continue
        module = PUBLIC_MODULES.get(".".join(parts[:2]))
        if module is not None:
            ok = len(parts) == 2 or parts[2] in module.__all__
        else:
            ok = parts[1] in signed_bus.__all__
        if not ok:
            wrong.append(dotted)
    assert wrong == []
