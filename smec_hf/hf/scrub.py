"""No local paths in anything published: one rule for every text file ``smec export`` writes and ``smec push`` sends.

A path of the exporting machine says who trained where (``/home/alice/...``) and means nothing elsewhere. Every
absolute path, home-relative (``~/...``) or dot-relative (``./``, ``../``) path, the user's home folder, and the
run's own paths (base model, data) however they were written, become ``<local>/<base name>``. URLs are left alone
(a path right after ``:``, ``/`` or a word character is part of something else), and so are tokenizer
vocabularies, which are model data that a replaced token would corrupt.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

PLACEHOLDER = "<local>"
TEXT_SUFFIXES = frozenset({".json", ".md", ".txt", ".py", ".yaml", ".yml", ".jinja", ".cfg", ".csv", ".tsv"})
MODEL_DATA_FILES = frozenset({"tokenizer.json", "vocab.txt", "vocab.json", "merges.txt"})
_SEGMENT = r"""[^\s/\\'"`()<>\[\]{}|,;]+"""
_PATH = re.compile(
    rf"""(?<![\w:/.~<>\\-])(?:(?:~[\w.-]*|\.\.?)(?:/{_SEGMENT})+|(?:/{_SEGMENT}){{2,}})/?"""   # POSIX: ~/a, ./a, /a/b
    r"""|(?<![\w])[A-Za-z]:\\[^\s'"`<>|]+""")                                                   # Windows: C:\a
_TRAILING = ".:"   # sentence punctuation after a path is not part of it


def _placeholder(path: str) -> str:
    name = re.split(r"[\\/]", path.rstrip("/\\"))[-1]
    return f"{PLACEHOLDER}/{name}" if name not in ("", ".", "..", "~") else PLACEHOLDER


def _replace(match: re.Match) -> str:
    path = match.group(0)
    kept = path.rstrip(_TRAILING)
    return _placeholder(kept) + path[len(kept):]


def scrub_text(text: str, local_paths: Iterable[str | Path] = ()) -> str:
    """``text`` with every local path replaced (see the module docstring). ``local_paths``: the run's own paths,
    replaced also where they are relative (``models/encoder``). A name that is not a local path (a Hub id such as
    ``org/model``: no such folder here) or has no separator (a word as well) is left alone."""
    forms = set()
    for path in map(str, local_paths):
        local = Path(path).expanduser()
        if ("/" in path or "\\" in path) and (local.is_absolute() or path.startswith((".", "~")) or local.exists()):
            forms.update({path.rstrip("/"), str(local.resolve())})
    for form in sorted(forms, key=len, reverse=True):   # the longest first: a path before its parent folder
        text = re.sub(rf"(?<![\w/]){re.escape(form)}(?![\w.-])", _placeholder(form), text)
    home = str(Path.home())
    if home not in ("/", ""):
        text = re.sub(rf"(?<![\w/.]){re.escape(home)}(?![\w.-])", "~", text)
    return _PATH.sub(_replace, text)


def scrub_value(value: Any, local_paths: Iterable[str | Path] = ()) -> Any:
    """A JSON value with :func:`scrub_text` applied to every string in it, keys included."""
    paths = tuple(local_paths)
    if isinstance(value, dict):
        return {scrub_text(str(k), paths): scrub_value(v, paths) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_value(v, paths) for v in value]
    return scrub_text(value, paths) if isinstance(value, str) else value


def is_text(file: Path) -> bool:
    """Whether ``file`` is published scrubbed: text, and not a tokenizer vocabulary."""
    return file.suffix in TEXT_SUFFIXES and file.name not in MODEL_DATA_FILES


def publishable_text(file: Path, local_paths: Iterable[str | Path] = ()) -> str:
    """A text file's content to publish: JSON through its values (so its escaping stays valid, and a file without
    paths keeps its bytes), any other text as a whole."""
    text = file.read_text(encoding="utf-8")
    if file.suffix != ".json":
        return scrub_text(text, local_paths)
    value = json.loads(text)
    scrubbed = scrub_value(value, local_paths)
    return text if scrubbed == value else json.dumps(scrubbed, indent=2, ensure_ascii=False)


def scrub_folder(folder: Path, local_paths: Iterable[str | Path] = ()) -> list[str]:
    """Rewrite every text file under ``folder`` in its publishable form; returns the files that changed."""
    paths = tuple(local_paths)
    changed = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and is_text(p)):
        published = publishable_text(file, paths)
        if published != file.read_text(encoding="utf-8"):
            file.write_text(published, encoding="utf-8")
            changed.append(str(file.relative_to(folder)))
    return changed
