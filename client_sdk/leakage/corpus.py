"""The public text the leakage report trains attackers on and evaluates with, split so the two never meet.

Shipped as client_sdk/data/leakage_corpus.json so the table does not change with the Python version.
Sources (all public): paragraphs of English prose from the docstrings of Python's standard library (PSF
license), the Zen of Python, the project's own instruction examples (splitmesh/data/*.jsonl) and the
clip-calibration sentences of client_sdk.privacy. The split is by source document: eval paragraphs come
from standard-library modules whose text the attacker never sees, plus the held-out instruction file.
`build_corpus` regenerates the file; the report only reads it.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import inspect
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

CORPUS_FILE = Path(__file__).resolve().parent.parent / "data" / "leakage_corpus.json"
SPLITMESH_DATA = Path(__file__).resolve().parent.parent.parent / "splitmesh" / "data"

# Standard-library modules mined for prose. Every EVAL_EVERY-th one (in this order) is held out.
_STDLIB_MODULES = [
    "abc",
    "argparse",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "ftplib",
    "functools",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.cookies",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "mimetypes",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "zipfile",
    "zipimport",
    "zlib",
    "codecs",
    "locale",
    "gettext",
    "getopt",
    "cmd",
    "configparser",
    "fileinput",
    "filecmp",
    "fnmatch",
    "graphlib",
    "keyword",
    "linecache",
    "lzma",
    "bz2",
    "netrc",
    "pdb",
    "profile",
    "pstats",
    "pydoc",
    "quopri",
    "reprlib",
    "runpy",
    "site",
    "stat",
    "symtable",
    "sysconfig",
    "tabnanny",
    "webbrowser",
    "wsgiref",
    "xmlrpc.client",
    "zoneinfo",
    "ast",
    "dis",
    "doctest",
    "concurrent.futures",
    "multiprocessing",
]
EVAL_EVERY = 8
_MIN_CHARS = 160  # shorter paragraphs are mostly signatures and one-liners
_MIN_PROSE = 0.9  # share of letters and spaces: keeps prose, drops code and tables


@dataclass(frozen=True)
class Corpus:
    train: list[str]  # the attacker's public training text
    eval: list[str]  # held-out text: what leakage and utility are measured on

    @classmethod
    def load(cls, path: Path = CORPUS_FILE) -> Corpus:
        data = json.loads(path.read_text())
        return cls(list(data["train"]), list(data["eval"]))


def _prose_paragraphs(module_name: str) -> list[str]:
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
        except Exception:
            return []
    objects: list[object] = [module]
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if getattr(value, "__module__", "") == module.__name__:
            objects.append(value)
    out: list[str] = []
    for obj in objects:
        for paragraph in re.split(r"\n\s*\n", inspect.getdoc(obj) or ""):
            text = " ".join(paragraph.split())
            if len(text) < _MIN_CHARS or ">>>" in text or "::" in text:
                continue
            if sum(c.isalpha() or c == " " for c in text) / len(text) >= _MIN_PROSE:
                out.append(text)
    return out


def _instructions(name: str) -> list[str]:
    lines = (SPLITMESH_DATA / name).read_text().splitlines()
    return [f"{row['prompt']} {row['completion']}" for row in map(json.loads, filter(None, lines))]


def build_corpus(path: Path = CORPUS_FILE) -> Corpus:
    """Mine the sources and write the corpus file (run once by a maintainer, then committed)."""
    from client_sdk.privacy import DEFAULT_CALIBRATION_TEXTS

    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen
        from this import s as zen_rot13

    train: list[str] = [*_instructions("instructions.jsonl"), *DEFAULT_CALIBRATION_TEXTS]
    evaluation: list[str] = [*_instructions("instructions_heldout.jsonl")]
    evaluation.append(" ".join(codecs.decode(zen_rot13, "rot13").split()))
    seen: set[str] = set()
    for index, module_name in enumerate(_STDLIB_MODULES):
        target = evaluation if index % EVAL_EVERY == EVAL_EVERY - 1 else train
        for text in _prose_paragraphs(module_name):
            if text not in seen:
                seen.add(text)
                target.append(text)
    corpus = Corpus(train, evaluation)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"sources": __doc__.split("\n\n")[1], "train": corpus.train, "eval": corpus.eval}
    path.write_text(json.dumps(payload, indent=0, ensure_ascii=False) + "\n")
    return corpus


if __name__ == "__main__":
    built = build_corpus()
    print(f"train {len(built.train)} texts {sum(map(len, built.train))} chars; eval {len(built.eval)} texts")
