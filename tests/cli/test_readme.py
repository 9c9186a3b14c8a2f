"""The README against the CLI and the marts, so that its option lists and defaults cannot drift.

What the README says is read the way a reader reads it:

- an *invocation* is ``attnwh COMMAND ...`` in a code block line (up to ``&&``, ``|``, ``;`` or a comment)
  or in an inline code span; every ``--option`` (or ``-x``) after the command is the command's;
- a *bare option* is an inline code span that starts with ``--`` (``--limit N``, ``--rows/--no-rows``);
  it belongs to the commands of its section's heading (``### `attnwh mask```), the commands the
  section's bash examples run, and the commands the same paragraph (or list item) names; it must be an
  option of at least one of them (outside every command's section and paragraph: of any command).
  Spans after a span that runs another program (``python -m pytest -q``, ``torchrun ...``) in the same
  paragraph are that program's and are skipped;
- a *default* is written ``default `VALUE``` after an option span (``--seeds`` ..., default ``3``), or
  as options in a span or a code comment after ``defaults:`` (``defaults: --k 0,0.1 --seeds 3``); a
  default stated as a bare number after an option (``default 3``) is refused, so that every default
  is in the checked form;
- a mart's parameters are the ``parameters`` column of a table whose first column is ``query``
  (``run_id`` required, ``k=10`` with its default), ``--param KEY=VALUE`` / ``-p KEY=VALUE`` of an
  ``attnwh query NAME`` invocation, and keyword arguments of ``wh.query("NAME", ...)``.

Every command of the CLI must have a ``### `attnwh COMMAND``` section and be run in an example, every
option must be spelled as the CLI's primary name (an old alias such as ``--ranking`` for
``--score`` is refused), and every default must equal the CLI's own (for an option whose CLI default
is None, the stated default must be the one its help text gives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import typer
import yaml

from attnwh.face.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARTS = ROOT / "queries" / "marts"

ALWAYS = {"--help", "--debug"}  # every command takes --help; --debug is taken anywhere by attnwh.face.cli.main
OTHER_PROGRAMS = {"python", "python3", "pip", "bash", "torchrun", "accelerate", "dask", "dask-cuda-worker", "apt-get", "pytest", "export"}
SEPARATOR = re.compile(r"&&|\|\||[|;#()]")
ATTNWH = re.compile(r"(?<![\w./$-])attnwh(?![\w.:\[/-])")
OPTION = re.compile(r"(?<![\w=/-])(--?[A-Za-z][\w-]*)")
QUOTED = re.compile(r"\"[^\"]*(\"|$)|'[^']*('|$)")
SPAN = re.compile(r"`([^`]+)`")
DEFAULT_BEFORE = re.compile(r"\bdefaults?:?\s*$")  # the text before a span that states a default
BARE_DEFAULT = re.compile(r"\bdefault:?\s+\d")
COMMENT_DEFAULTS = re.compile(r"#.*\bdefaults?:\s*(--.*)$")


# ---------------------------------------------------------------- the CLI


@cache
def commands() -> dict[str, object]:
    """Every command of the CLI by its path (``extract``, ``toy zoo``), from typer's click command tree."""
    found: dict[str, object] = {}

    def walk(group, prefix: str) -> None:
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found[f"{prefix}{name}"] = command

    walk(typer.main.get_command(app), "")
    return found


def command(path: str):
    """The command at ``path``; ``""`` is ``attnwh`` itself (``attnwh --version``)."""
    return typer.main.get_command(app) if path == "" else commands()[path]


def options(path: str) -> dict[str, object]:
    """The spellings the README may use for ``path``'s options: each option's primary long name, its short
    names and its ``--no-`` form, mapped to the option."""
    spelled = {}
    for param in command(path).params:
        if param.param_type_name != "option":
            continue
        longs = [name for name in param.opts if name.startswith("--")]
        for name in longs[:1] + [name for name in param.opts if not name.startswith("--")] + list(param.secondary_opts):
            spelled[name] = param
    return spelled


def aliases(path: str) -> dict[str, str]:
    """Old long names (a second ``--`` name of an option) → the primary name."""
    return {
        name: [n for n in param.opts if n.startswith("--")][0]
        for param in command(path).params
        if param.param_type_name == "option"
        for name in [n for n in param.opts if n.startswith("--")][1:]
    }


def default_problem(path: str, option: str, stated: str) -> str | None:
    """Why ``stated`` is not ``option``'s default in ``path`` (None when it is)."""
    param = options(path)[option]
    default = param.default
    if default is None:  # the command works the default out: its help says which
        return None if stated in (param.help or "") else f"the CLI's default is None and its help ({param.help!r}) does not give {stated!r}"
    if isinstance(default, bool):
        value = stated.lower() in ("true", "yes", "on", option) or (stated in param.opts and stated not in param.secondary_opts)
        return None if value == default else f"the CLI's default is {default!r}"
    if isinstance(default, (int, float)):
        try:
            same = float(stated) == float(default)
        except ValueError:
            same = False
        return None if same else f"the CLI's default is {default!r}"
    return None if stated == str(default) else f"the CLI's default is {str(default)!r}"


# ---------------------------------------------------------------- the README


@dataclass
class Block:
    """A paragraph, a list item or a code block of one section."""

    line: int  # first line, 1-based
    text: str
    code: str | None  # the code block's language ("" when none), None for prose
    section: tuple[str, ...]  # the commands the section's heading names
    heading: int  # which section (a heading of level 1 to 3): its number


@dataclass
class Claims:
    mentions: list[tuple[int, tuple[str, ...], str, bool]] = field(default_factory=list)  # line, scope, option, strict
    defaults: list[tuple[int, tuple[str, ...], str, str]] = field(default_factory=list)  # line, scope, option, value
    problems: list[str] = field(default_factory=list)
    invocations: list[tuple[int, str, str]] = field(default_factory=list)  # line, command, the text after it


def command_at(text: str) -> tuple[str | None, str]:
    """The command named right after ``attnwh`` at the start of ``text``, and the rest of ``text``."""
    words = text.split()
    if not words:
        return None, ""
    first, second = words[0], words[1] if len(words) > 1 else ""
    for path in (f"{first} {second}", first):
        if path in commands():
            rest = text.split(path.split()[-1], 1)[1]
            return path, rest
    return None, text


def blocks() -> list[Block]:
    found: list[Block] = []
    section: tuple[str, ...] = ()
    heading = 0
    lines = README.read_text(encoding="utf-8").splitlines()
    buffer: list[str] = []
    start = 0
    code: str | None = None

    def flush() -> None:
        if buffer:
            found.append(Block(start + 1, "\n".join(buffer), code, section, heading))
        buffer.clear()

    for number, line in enumerate(lines):
        if code is not None:
            if line.startswith("```"):
                flush()
                code = None
                continue
            if not buffer:
                start = number
            buffer.append(line)
            continue
        if line.startswith("```"):
            flush()
            code = line[3:].strip()
            start = number + 1
            continue
        match = re.match(r"(#+)\s+(.*)", line)
        if match:
            flush()
            level, heading_text = len(match.group(1)), match.group(2)
            if level <= 3:
                heading += 1
                section = tuple(path for span in SPAN.findall(heading_text) for path in [command_at(span.removeprefix("attnwh "))[0]] if span.startswith("attnwh ") and path)
            continue
        if not line.strip() or re.match(r"\s*([-*]|\d+\.)\s", line):
            flush()
            if not line.strip():
                continue
        if not buffer:
            start = number
        buffer.append(line)
    flush()
    return found


def invocations_in(text: str) -> list[tuple[str | None, str, int]]:
    """``(command, its arguments, offset)`` for each ``attnwh ...`` in a code line or span (command None: not
    one; ``""``: ``attnwh --option``)."""
    found = []
    for match in ATTNWH.finditer(text):
        rest = text[match.end() :]
        path, after = command_at(rest)
        if path is None and rest.lstrip().startswith("--"):
            path, after = "", rest
        if path is None:
            found.append((None, rest.strip(), match.start()))
            continue
        found.append((path, SEPARATOR.split(QUOTED.sub(" ", after))[0], match.start()))
    return found


@cache
def claims() -> Claims:
    result = Claims()
    examples: dict[int, tuple[str, ...]] = {}  # the commands each section's bash examples run
    for block in blocks():
        if block.code in ("bash", "sh"):
            run = tuple(path for line in block.text.splitlines() for path, _, _ in invocations_in(without_comment(line)) if path)
            examples[block.heading] = tuple(dict.fromkeys(examples.get(block.heading, ()) + run))
    for block in blocks():
        if block.code is not None:
            if block.code not in ("bash", "sh"):
                continue
            for offset, line in enumerate(block.text.splitlines()):
                number = block.line + offset
                for path, args, _ in invocations_in(without_comment(line)):
                    if path is None:
                        if re.match(r"[a-z][\w-]*\s", args) and not args.startswith(("error", "warning", "internal")):
                            result.problems.append(f"line {number}: `attnwh {args.split()[0]}` is not a command of the CLI")
                        continue
                    result.invocations.append((number, path, args))
                    result.mentions.extend((number, (path,), option, True) for option in OPTION.findall(args))
                comment = COMMENT_DEFAULTS.search(line)
                if comment:
                    paths = [path for path, _, _ in invocations_in(without_comment(line)) if path]
                    if not paths:
                        result.problems.append(f"line {number}: `# defaults:` on a line that runs no attnwh command")
                        continue
                    result.defaults.extend((number, (paths[-1],), option, value) for option, value in pairs(comment.group(1)))
            continue
        text = block.text.replace("\n", " ")
        named = tuple(path for span in SPAN.findall(text) for path, _, _ in invocations_in(span) if path)
        scope = tuple(dict.fromkeys(block.section + examples.get(block.heading, ()) + named))
        last_option: tuple[str, tuple[str, ...]] | None = None  # the last option span and its commands
        foreign = False  # the last program span ran another program
        previous_end = 0
        for match in SPAN.finditer(text):
            span = match.group(1).strip()
            number = block.line + block.text[: match.start()].count("\n")
            stated = DEFAULT_BEFORE.search(text[previous_end : match.start()])
            previous_end = match.end()
            if stated:
                if span.startswith("--"):  # defaults: `--opt VALUE --opt VALUE`
                    if scope:
                        result.defaults.extend((number, scope, option, value) for option, value in pairs(span))
                    continue
                if last_option is not None:
                    result.defaults.append((number, last_option[1], last_option[0], span))
                    last_option = None
                    continue
            calls = [(path, args) for path, args, _ in invocations_in(span) if path is not None]
            if calls:
                foreign = False
                for path, args in calls:
                    result.invocations.append((number, path, args))
                    found = OPTION.findall(args)
                    result.mentions.extend((number, (path,), option, True) for option in found)
                    if found:
                        last_option = (found[-1], (path,))
                continue
            if span.split()[0] in OTHER_PROGRAMS:
                foreign = True
                last_option = None
                continue
            if span.startswith("--") and not foreign:
                found = [option for option in OPTION.findall(span) if option.startswith("--")]
                if scope:
                    result.mentions.extend((number, scope, option, False) for option in found)
                else:
                    result.mentions.extend((number, tuple(commands()), option, False) for option in found)
                last_option = (found[0], scope or tuple(commands())) if found else None
        for bare in BARE_DEFAULT.finditer(text):
            spans = list(SPAN.finditer(text[: bare.start()]))
            if spans and spans[-1].group(1).strip().startswith(("--", "attnwh ")) and bare.start() - spans[-1].end() < 60:
                result.problems.append(
                    f"line {block.line + block.text[: bare.start()].count(chr(10))}: a default written as {text[bare.start() : bare.end() + 6]!r}; "
                    "write it as default `VALUE` so that it is checked"
                )
    return result


def without_comment(line: str) -> str:
    """A shell line without its comment (a ``#`` at the start or after a space, outside quotes)."""
    quoted = QUOTED.sub(lambda match: "_" * len(match.group(0)), line)
    at = re.search(r"(^|\s)#", quoted)
    return line if at is None else line[: at.start()]


def pairs(text: str) -> list[tuple[str, str]]:
    """``--opt VALUE --flag`` → ``[("--opt", "VALUE"), ("--flag", "--flag")]``."""
    words = text.split()
    found = []
    for index, word in enumerate(words):
        if word.startswith("--"):
            value = words[index + 1] if index + 1 < len(words) and not words[index + 1].startswith("--") else word
            found.append((word, value))
    return found


# ---------------------------------------------------------------- the tests


def test_the_readme_is_read():
    """The parsing finds what it must (so that the checks below cannot pass by reading nothing)."""
    found = claims()
    assert len(found.mentions) > 150 and len(found.invocations) > 60
    stated = {(path, option) for _, scope, option, _ in found.defaults for path in scope}
    assert {("toy zoo", "--limit"), ("toy zoo", "--seeds"), ("mask", "--k"), ("prune", "--kv-share"), ("extract", "--batch-size")} <= stated, stated
    assert {path for _, path, _ in found.invocations} == set(commands()) | {""}  # "": attnwh --version


def test_every_command_has_a_section():
    headings = {path for block in blocks() for path in block.section}
    missing = sorted(set(commands()) - headings)
    assert not missing, f"commands without a `### \\`attnwh COMMAND\\`` section in the README: {missing}"


def test_every_option_the_readme_names_exists():
    found = claims()
    wrong = list(found.problems)
    for number, scope, option, strict in found.mentions:
        if option in ALWAYS:
            continue
        if any(option in options(path) for path in scope):
            continue
        old = [f"{option} is an old name of {aliases(path)[option]} in `attnwh {path}`" for path in scope if option in aliases(path)]
        where = f"`attnwh {scope[0]}`" if strict else f"any of {', '.join(f'`attnwh {path}`' for path in scope)}"
        wrong.append(f"line {number}: " + (old[0] if old else f"{option} is not an option of {where}"))
    assert not wrong, "README options that the CLI does not have:\n" + "\n".join(wrong)


def test_every_default_the_readme_states_is_the_clis():
    wrong = []
    for number, scope, option, value in claims().defaults:
        having = [path for path in scope if option in options(path)]
        if not having:
            wrong.append(f"line {number}: a default for {option}, which none of {list(scope)} has")
        for path in having:
            problem = default_problem(path, option, value)
            if problem:
                wrong.append(f"line {number}: `attnwh {path} {option}` default {value!r}: {problem}")
    assert not wrong, "README defaults that are not the CLI's:\n" + "\n".join(wrong)


@cache
def sidecars() -> dict[str, dict]:
    return {path.stem: yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted(MARTS.glob("*.yml"))}


def test_every_mart_is_named():
    readme = README.read_text(encoding="utf-8")
    missing = [name for name in sidecars() if f"`{name}`" not in readme]
    assert not missing, f"marts the README never names: {missing}"


def mart_tables() -> list[tuple[int, str, str]]:
    """``(line, mart, parameters cell)`` of every row of a README table headed ``| query | ... | parameters | ...``."""
    rows = []
    columns: list[str] | None = None
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|"):
            columns = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if columns is None:
            columns = cells
            continue
        if set("".join(cells)) <= set("-: ") or columns[0] != "query" or "parameters" not in columns:
            continue
        rows.append((number, cells[0].strip("`"), cells[columns.index("parameters")]))
    return rows


def test_mart_parameters_are_the_sidecars():
    wrong = []
    tabled = mart_tables()
    assert len(tabled) >= 20
    for number, name, cell in tabled:
        if name not in sidecars():
            wrong.append(f"line {number}: {name!r} is not a mart")
            continue
        declared = sidecars()[name].get("parameters") or {}
        stated = dict(item.partition("=")[::2] for item in SPAN.findall(cell))
        if set(stated) != set(declared):
            wrong.append(f"line {number}: {name} parameters {sorted(stated)} in the README, {sorted(declared)} in its sidecar")
        for key, value in stated.items():
            if key in declared and value != str(declared[key].get("default", "")):
                wrong.append(f"line {number}: {name} parameter {key}: default {value!r} in the README, {declared[key].get('default')!r} in its sidecar")
    readme = README.read_text(encoding="utf-8")
    for number, path, args in claims().invocations:
        words = args.split()
        if path != "query" or not words or words[0].startswith("-"):
            continue
        name = words[0]
        if name not in sidecars():
            wrong.append(f"line {number}: `attnwh query {name}`: no such mart")
            continue
        for key in re.findall(r"(?:--param|-p)\s+(\w+)=", args):
            if key not in (sidecars()[name].get("parameters") or {}):
                wrong.append(f"line {number}: `attnwh query {name}` has no parameter {key}")
    for match in re.finditer(r"\.query\(\"(\w+)\"((?:,\s*\w+=[^,)]+)*)\)", readme):
        name = match.group(1)
        for key in re.findall(r"(\w+)=", match.group(2)):
            if key not in (sidecars().get(name, {}).get("parameters") or {}):
                wrong.append(f"line {readme[: match.start()].count(chr(10)) + 1}: wh.query({name!r}) has no parameter {key}")
    assert not wrong, "README mart parameters that are not the sidecars':\n" + "\n".join(wrong)
