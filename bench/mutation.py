"""A small mutation tester: does each core module's test suite notice a one-token change?

    python bench/mutation.py silicon_pool/keyparse.py                 # its default fast tests
    python bench/mutation.py silicon_pool/pool.py --tests tests/test_pool.py tests/test_rests.py
    python bench/mutation.py silicon_pool/http1.py --sample 120 --seed 1
    python bench/mutation.py silicon_pool/usage.py --list             # the mutants, none run
    python bench/mutation.py silicon_pool/http1.py --tests tests/test_http1.py -k "not uvloop"  # -k… goes to pytest

Mutants are made one at a time from the module's AST: comparisons flipped (`<`/`<=`, `==`/`!=`,
`in`/`not in`, `is`/`is not`), `and`/`or` swapped, an operand of a boolean op dropped, `+`/`-`
swapped (`+=`/`-=` too), a condition negated, a statement replaced by `pass`, an integer moved by
one, a string garbled; in the regular expressions handed to `re` (literal or built from module
constants): a look-around dropped, a `{m,n}` bound moved by one or removed, one member of a
character class dropped. Each is written over the module in a private copy of the repo (never
in the working tree), and the module's fast tests run against it (`pytest -x`) in a forked child
of a worker that has already imported the third-party libraries, under a time-out of three times
the clean run. Mutants listed in bench/mutation-equivalent.txt (judged to change nothing a caller
can see) are skipped. Not part of CI: a module takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import hashlib
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = Path(__file__).with_name("mutation-equivalent.txt")
MAX_WORKERS = 2  # the machine has two cores, shared with other work

# The fast unit tests relevant to each module (no browser, no subprocesses); pinned tests first.
DEFAULT_TESTS: dict[str, list[str]] = {
    "silicon_pool/pool.py": [
        "tests/test_pinned_pool.py",
        "tests/test_pool.py",
        "tests/test_rests.py",
        "tests/test_rests_retry_after.py",
        "tests/test_rests_many_models.py",
        "tests/test_free_token_keys.py::test_unknown_balances_form_their_own_index_that_follows_the_balance",
    ],
    "silicon_pool/selection.py": ["tests/test_pinned_selection.py", "tests/test_pool.py"],
    "silicon_pool/keyparse.py": ["tests/test_keyparse.py"],
    "silicon_pool/usage.py": ["tests/test_usage.py"],
    "silicon_pool/upstream.py": ["tests/test_pinned_upstream.py"],
    "silicon_pool/http1.py": ["tests/test_pinned_http1.py", "tests/test_http1.py", "-k", "not uvloop and not slow"],
    "silicon_pool/http1_parser.py": [
        "tests/test_http1_parser.py",
        "tests/test_http1_differential.py",
        "tests/test_pinned_http1.py",
        "tests/test_http1.py",
        "-k",
        "not uvloop and not slow",
    ],
}
# The parts of a module under test when not all of it is (of http1.py: what the connection makes of a head and an end).
DEFAULT_ONLY: dict[str, list[str]] = {
    "silicon_pool/http1.py": ["<module>", "_Connection.on_head", "_Connection.on_end", "_gzip_layers"],
    "silicon_pool/upstream.py": ["error_code", "classify", "describe", "describe_exception"],
}
# Third-party modules a worker imports once, so a mutant's run pays only for the project's own.
PRELOAD = ("pytest", "aiohttp", "aiohttp.web", "orjson", "yarl", "cryptography", "openai", "uvloop", "hypothesis")
# Preloaded plugins cannot have their asserts rewritten; that warning is no failure of the module.
PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning")
RE_FUNCS = {"compile", "match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer"}


@dataclass(frozen=True, slots=True)
class Mutant:
    index: int  # the node's place in the walk, to find it again in a fresh parse
    kind: str  # cmp, bool, drop, arith, negate, delete, int, str, regex
    scope: str  # the enclosing function or class, dotted; `<module>` at the top
    line: int
    col: int
    before: str
    after: str
    ident: str  # stable across edits elsewhere in the file: scope, kind and a hash of the change


@dataclass(frozen=True, slots=True)
class Change:
    kind: str
    after: str
    make: Callable[[ast.AST], ast.AST]


# -- finding mutants -----------------------------------------------------------------------------

_CMP_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_ARITH_SWAP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.FloorDiv,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
}


def _walk(tree: ast.AST) -> Iterator[tuple[ast.AST, ast.AST | None, str, int | None, str]]:
    """Every node with its parent, the field and list place it sits in, and its scope, in a fixed order."""

    def visit(
        node: ast.AST, parent: ast.AST | None, field: str, idx: int | None, scope: str
    ) -> Iterator[tuple[ast.AST, ast.AST | None, str, int | None, str]]:
        if _inert(node):
            return
        yield node, parent, field, idx, scope
        inner = scope
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            inner = node.name if scope == "<module>" else f"{scope}.{node.name}"
        for name, value in ast.iter_fields(node):
            if name in ("annotation", "returns", "decorator_list"):
                continue  # annotations are strings under `from __future__ import annotations`
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        yield from visit(item, node, name, i, inner)
            elif isinstance(value, ast.AST):
                yield from visit(value, node, name, None, inner)

    yield from visit(tree, None, "", None, "<module>")


def _inert(node: ast.AST) -> bool:
    """Code that never runs: `if TYPE_CHECKING:` imports and the `...` bodies of protocol stubs."""
    if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
        return True
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node.value.value is Ellipsis


def _is_docstring(node: ast.AST, parent: ast.AST | None, field: str, idx: int | None) -> bool:
    return (
        field == "body"
        and idx == 0
        and isinstance(parent, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _regex_constants(tree: ast.Module) -> set[int]:
    """ids of the str/bytes constants that make up a pattern handed to `re`: literal arguments of
    `re.compile(...)` and friends, and the module constants such arguments are built from."""
    pattern_args: list[ast.AST] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "re"
            and node.func.attr in RE_FUNCS
            and node.args
        ):
            pattern_args.append(node.args[0])
    assigned = {
        target.id: stmt.value
        for stmt in tree.body
        if isinstance(stmt, ast.Assign)
        for target in stmt.targets
        if isinstance(target, ast.Name)
    }
    found: set[int] = set()
    seen: set[str] = set()
    todo = list(pattern_args)
    while todo:
        for sub in ast.walk(todo.pop()):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str | bytes):
                found.add(id(sub))
            elif isinstance(sub, ast.Name) and sub.id in assigned and sub.id not in seen:
                seen.add(sub.id)
                todo.append(assigned[sub.id])
    return found


def _negated(node: ast.AST) -> ast.AST:
    assert isinstance(node, ast.expr)
    return ast.copy_location(ast.UnaryOp(ast.Not(), node), node)


def _const(value: str | bytes | int) -> Callable[[ast.AST], ast.AST]:
    return lambda node: ast.copy_location(ast.Constant(value), node)


def _changes(node: ast.AST, parent: ast.AST | None, field: str, idx: int | None, regexes: set[int]) -> Iterator[Change]:
    """The mutations of one node (each a function from the fresh node to its replacement)."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            swap = _CMP_SWAP.get(type(op))
            if swap is not None:

                def flip(n: ast.AST, i: int = i, swap: type[ast.cmpop] = swap) -> ast.AST:
                    assert isinstance(n, ast.Compare)
                    n.ops[i] = swap()
                    return n

                yield Change("cmp", f"{type(op).__name__} -> {swap.__name__}", flip)
    elif isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And

        def swap_bool(n: ast.AST, other: type[ast.boolop] = other) -> ast.AST:
            assert isinstance(n, ast.BoolOp)
            n.op = other()
            return n

        yield Change("bool", f"{type(node.op).__name__} -> {other.__name__}", swap_bool)
        for i in range(len(node.values)):

            def drop(n: ast.AST, i: int = i) -> ast.AST:
                assert isinstance(n, ast.BoolOp)
                rest = n.values[:i] + n.values[i + 1 :]
                return rest[0] if len(rest) == 1 else ast.copy_location(ast.BoolOp(n.op, rest), n)

            yield Change("drop", f"operand {i} dropped", drop)
    elif isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in _ARITH_SWAP:
        to = _ARITH_SWAP[type(node.op)]

        def arith(n: ast.AST, to: type[ast.operator] = to) -> ast.AST:
            assert isinstance(n, ast.BinOp | ast.AugAssign)
            n.op = to()
            return n

        yield Change("arith", f"{type(node.op).__name__} -> {to.__name__}", arith)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield Change("negate", "`not` dropped", lambda n: n.operand if isinstance(n, ast.UnaryOp) else n)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        yield Change("int", f"{node.value} -> {node.value + 1}", _const(node.value + 1))
        yield Change("int", f"{node.value} -> {node.value - 1}", _const(node.value - 1))
    elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes) and field != "format_spec":
        garbled = "XX" + node.value + "XX" if isinstance(node.value, str) else b"XX" + node.value + b"XX"
        yield Change("str", f"{node.value!r} -> {garbled!r}", _const(garbled))
        if id(node) in regexes:
            for after in _regex_variants(node.value):
                yield Change("regex", f"{node.value!r} -> {after!r}", _const(after))
    if (
        isinstance(parent, ast.If | ast.While | ast.IfExp | ast.Assert | ast.comprehension)
        and field in ("test", "ifs")
        and isinstance(node, ast.expr)
        and not (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not))
    ):
        yield Change("negate", "condition negated", _negated)
    if (
        isinstance(node, ast.stmt)
        and idx is not None
        and not isinstance(parent, ast.Module | ast.ClassDef)
        and not isinstance(node, ast.Pass | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not _is_docstring(node, parent, field, idx)
    ):
        yield Change("delete", "statement -> pass", lambda n: ast.copy_location(ast.Pass(), n))


# -- regular expressions -------------------------------------------------------------------------

_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _escape_end(text: str, i: int) -> int:
    """The end of the (possibly escaped) character at `i`."""
    if text[i] != "\\" or i + 1 >= len(text):
        return i + 1
    return i + 2 + _HEX_ESCAPES.get(text[i + 1], 0)


def _class_items(text: str, start: int) -> tuple[list[tuple[int, int]], int] | None:
    """The members (spans) of the character class opening at `start`, and the class's end."""
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    items: list[tuple[int, int]] = []
    first = True
    while i < len(text) and (text[i] != "]" or first):
        first = False
        end = _escape_end(text, i)
        if end + 1 < len(text) and text[end] == "-" and text[end + 1] != "]":
            end = _escape_end(text, end + 1)
        items.append((i, end))
        i = end
    return (items, i + 1) if i < len(text) else None


def _group_end(text: str, start: int) -> int | None:
    """The end of the group opening at `start` (escapes and classes skipped)."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i = _escape_end(text, i)
            continue
        if c == "[":
            found = _class_items(text, i)
            if found is None:
                return None
            i = found[1]
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _regex_text_variants(text: str) -> Iterator[str]:
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i = _escape_end(text, i)
            continue
        if c == "[":
            found = _class_items(text, i)
            if found is None:
                return
            items, end = found
            if len(items) > 1:
                for a, b in items:
                    yield text[:a] + text[b:]
            i = end
            continue
        if text.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
            group_end = _group_end(text, i)
            if group_end is not None:
                yield text[:i] + text[group_end:]
        if c == "{":
            bound = re.match(r"\{(\d+)(,?)(\d*)\}", text[i:])
            if bound is not None:
                low, comma, high = int(bound[1]), bound[2], bound[3]
                rest = text[i + bound.end() :]
                for new_low in (low - 1, low + 1):
                    if new_low >= 0 and (not high or new_low <= int(high)):
                        yield text[:i] + f"{{{new_low}{comma}{high}}}" + rest
                if high:
                    for new_high in (int(high) - 1, int(high) + 1):
                        if new_high >= low:
                            yield text[:i] + f"{{{low},{new_high}}}" + rest
                    yield text[:i] + f"{{{low},}}" + rest
                yield text[:i] + "+" + rest
        i += 1


def _regex_variants(value: str | bytes) -> list[str | bytes]:
    """Mutated patterns that still compile (when the original does on its own)."""
    text = value if isinstance(value, str) else value.decode("latin-1")
    variants: list[str | bytes] = []
    for after in dict.fromkeys(_regex_text_variants(text)):
        mutated: str | bytes = after if isinstance(value, str) else after.encode("latin-1")
        if _compiles(value) and not _compiles(mutated):
            continue
        variants.append(mutated)
    return variants


def _compiles(pattern: str | bytes) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


# -- the mutants of a module ---------------------------------------------------------------------


def mutants(source: str, only: list[str] | None) -> list[Mutant]:
    tree = ast.parse(source)
    regexes = _regex_constants(tree)
    docstrings = {id(n.value) for n, p, f, i, _ in _walk(tree) if _is_docstring(n, p, f, i) and isinstance(n, ast.Expr)}
    found: list[Mutant] = []
    seen: dict[str, int] = {}
    for index, (node, parent, field, idx, scope) in enumerate(_walk(tree)):
        if only is not None and not any(scope == s or scope.startswith(s + ".") for s in only):
            continue
        if id(node) in docstrings:
            continue
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        before = ast.get_source_segment(source, node) or ast.unparse(node)
        for change in _changes(node, parent, field, idx, regexes):
            key = f"{scope}|{change.kind}|{before}|{change.after}"
            seen[key] = seen.get(key, 0) + 1
            digest = hashlib.sha1(f"{key}|{seen[key]}".encode()).hexdigest()[:8]
            found.append(
                Mutant(index, change.kind, scope, line, col, before, change.after, f"{scope}:{change.kind}:{digest}")
            )
    return found


def apply(source: str, mutant: Mutant) -> str:
    """The module's source with `mutant` applied (regenerated from the AST: comments go)."""
    tree = ast.parse(source)
    regexes = _regex_constants(tree)
    for index, (node, parent, field, idx, _) in enumerate(_walk(tree)):
        if index != mutant.index:
            continue
        for change in _changes(node, parent, field, idx, regexes):
            if change.kind == mutant.kind and change.after == mutant.after:
                replacement = change.make(copy.deepcopy(node))
                if idx is None:
                    setattr(parent, field, replacement)
                else:
                    getattr(parent, field)[idx] = replacement
                return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    raise LookupError(f"mutant {mutant.ident} not found")


def read_equivalent(module: str) -> dict[str, str]:
    """ident -> why, for `module`, from the equivalent list (`module ident why…`, # comments)."""
    judged: dict[str, str] = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text(encoding="utf-8").splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2 and not parts[0].startswith("#") and parts[0] == module:
                judged[parts[1]] = parts[2] if len(parts) > 2 else ""
    return judged


# -- running -------------------------------------------------------------------------------------

_worker: dict[str, object] = {}


def _init_worker(parent: str, module: str, source: str, tests: list[str]) -> None:
    """A private copy of the repo, and the third-party imports done once (silicon_pool is not)."""
    os.nice(10)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    copy_dir = Path(tempfile.mkdtemp(prefix="worker-", dir=parent))
    for part in ("silicon_pool", "tests", "templates", "static"):
        src = ROOT / part
        if src.exists():
            shutil.copytree(src, copy_dir / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".npm"))
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy2(ROOT / name, copy_dir / name)
    _worker.update(dir=copy_dir, module=module, source=source, tests=tests)


def _run(code: str, timeout: float) -> tuple[str, float]:
    """Run the tests in a forked child against `code` as the module: killed, survived or timeout."""
    copy_dir, module, tests = _worker["dir"], _worker["module"], _worker["tests"]
    assert isinstance(copy_dir, Path) and isinstance(module, str) and isinstance(tests, list)
    (copy_dir / module).write_text(code, encoding="utf-8")
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: fresh imports of the project from the copy
        status = 1
        try:
            os.chdir(copy_dir)
            sys.path.insert(0, str(copy_dir))
            sys.dont_write_bytecode = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            status = int(pytest.main([*PYTEST_ARGS, *tests]))
        finally:
            os._exit(status)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        elapsed = time.monotonic() - started
        if done:
            return ("survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"), elapsed
        if elapsed > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", elapsed
        time.sleep(0.02)


def _clean_run(_: int) -> tuple[str, float]:
    source = _worker["source"]
    assert isinstance(source, str)
    return _run(source, 600)


def _mutant_run(job: tuple[Mutant, float]) -> tuple[Mutant, str]:
    mutant, timeout = job
    source = _worker["source"]
    assert isinstance(source, str)
    return mutant, _run(apply(source, mutant), timeout)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", help="e.g. silicon_pool/pool.py")
    parser.add_argument("--tests", nargs="+", help="pytest arguments (default: the module's fast unit tests)")
    parser.add_argument("--only", nargs="+", help="scopes to mutate, e.g. ResponseParser._head <module>")
    parser.add_argument(
        "--kind", nargs="+", help="mutant kinds to keep (cmp bool drop arith negate delete int str regex)"
    )
    parser.add_argument("--sample", type=int, help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=MAX_WORKERS)
    parser.add_argument("--list", action="store_true", help="print the mutants, run none")
    parser.add_argument("--ids", nargs="+", help="run only these mutants (say, the survivors of the last run)")
    args, extra = parser.parse_known_args(argv)  # what argparse does not know (`-k …`) goes to pytest

    module = Path(args.module).as_posix()
    source = (ROOT / module).read_text(encoding="utf-8")
    tests = [*(args.tests or DEFAULT_TESTS.get(module, [])), *extra]
    if not tests:
        parser.error(f"no default tests for {module}: give --tests")
    tests = [t for t in tests if not t.startswith("tests/") or (ROOT / t.split("::")[0]).exists()]
    if not any(t.startswith("tests/") for t in tests):
        parser.error(f"none of the test files for {module} exists yet: give --tests")
    only = args.only or DEFAULT_ONLY.get(module)
    found = mutants(source, only)
    if args.kind:
        found = [m for m in found if m.kind in args.kind]
    if args.ids:
        found = [m for m in found if m.ident in set(args.ids)]
    if args.sample is not None and args.sample < len(found):  # drawn before the judged ones go: a stable sample
        found = sorted(random.Random(args.seed).sample(found, args.sample), key=lambda m: m.index)
    judged = read_equivalent(module)
    equivalent = [m for m in found if m.ident in judged]
    todo = [m for m in found if m.ident not in judged]
    if args.list:
        for m in todo:
            print(f"{m.line}:{m.col} {m.ident} {m.before[:60]!r}: {m.after[:80]}")
        return 0

    workers = max(1, min(args.workers, MAX_WORKERS))
    ctx = multiprocessing.get_context("fork")
    with (
        tempfile.TemporaryDirectory(prefix="mutation-") as parent,
        ctx.Pool(workers, _init_worker, (parent, module, source, tests)) as pool,
    ):
        clean, seconds = pool.map(_clean_run, range(workers))[0]
        if clean != "survived":
            print(f"the tests fail on the unmutated {module}: {tests}", file=sys.stderr)
            return 2
        timeout = max(3 * seconds, seconds + 5)
        print(f"{module}: {len(todo)} mutants ({len(equivalent)} judged equivalent), tests {' '.join(tests)}")
        print(f"clean run {seconds:.1f}s, time-out {timeout:.1f}s", flush=True)
        results: dict[str, list[Mutant]] = {"killed": [], "survived": [], "timeout": []}
        for n, (mutant, outcome) in enumerate(pool.imap_unordered(_mutant_run, [(m, timeout) for m in todo]), 1):
            results[outcome].append(mutant)
            if outcome != "killed":
                print(f"  [{n}/{len(todo)}] {outcome}: {_describe(mutant)}", flush=True)
    _report(module, todo, results, len(equivalent))
    return 0


def _describe(m: Mutant) -> str:
    before = m.before if len(m.before) <= 70 else m.before[:67] + "..."
    return f"line {m.line}:{m.col} [{m.ident}] {before!r}: {m.after[:100]}"


def _report(module: str, todo: list[Mutant], results: dict[str, list[Mutant]], equivalent: int) -> None:
    for label, part in (
        ("code", [m for m in todo if m.kind != "regex"]),
        ("regex", [m for m in todo if m.kind == "regex"]),
    ):
        if not part:
            continue
        ids = {m.ident for m in part}
        killed, survived, timed_out = (len([m for m in results[k] if m.ident in ids]) for k in results)
        score = 100 * (killed + timed_out) / len(part)
        print(
            f"| {module} ({label}) | {len(part)} | {killed} | {survived} | {timed_out} | "
            f"{equivalent if label == 'code' else '-'} | {score:.1f} % |"
        )
    for m in sorted(results["survived"] + results["timeout"], key=lambda m: m.index):
        status = "timeout " if m in results["timeout"] else "survived"
        print(f"  {status} {_describe(m)}")


if __name__ == "__main__":
    sys.exit(main())
