"""Which programs a shell command will look up, read as /bin/sh reads it, without running it.

`read_command(command)` reads a `reload`, `running` or sink `command`, or a hook, and returns a
`Reading`: the programs the shell (or a program the command starts, such as `sh -c`, `env` or
`timeout`) will look up, in the order it meets them, and `unread`: why a part could not be
read, or None. It never raises; the caller looks each program up and says `unread` as it is.

What it reads: quoting ('...', "...", backslashes); the separators `&&`, `||`, `;`, `|`, `&`
and newlines; comments; redirections; `VAR=value` words; `( ... )`, `{ ...; }`, `!`,
`if`/`while`/`until`/`for`/`case` (the commands inside, not the keywords, words or patterns);
`[[ ... ]]`; the prefixes
`exec`, `command`, `env`, `nice`, `timeout`, `nohup`, `setsid` and `sudo`; the string of
`sh -c` (and `bash -c`, `dash -c`), and `$(...)`, each read as the commands they are.

It stops, saying nothing, where what follows depends on what only running tells: after a
built-in that may change how the next programs are found (`cd`, `export`, a `PATH=` word,
`source`, `eval` ...) and at a program named by an expansion (`$X`, `~`, a glob, `{a,b}`).
Inside `( ... )`, `$(...)` or `sh -c` (a process of their own) it stops only there.

A program the command looks for before it runs it (`command -v NAME`, `command -V NAME`,
`which NAME`) is in `probed` too: its absence is the command's own business (`if command -v
systemctl >/dev/null; then systemctl reload nginx; else service nginx reload; fi`).

What it does not read is `unread`, with the programs before it kept: here-documents,
backquotes, functions, bash arrays, `select`, `(( ))`, `<(...)`, an unclosed quote, an `sh -c`
string that the outer shell expands first, and a `case` inside a `$(...)` or in the part of a
`( ... )` skipped after a built-in that changes what follows (its patterns end in ")"). A
command it cannot even split into words (a here-document, backquotes, `<(...)`, an unclosed
quote) gives no program at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Reading", "read_command"]


@dataclass(frozen=True, slots=True)
class Reading:
    """The programs a command looks up, in order, why a part was not read (or None), and the
    names it looks for before running them (`command -v NAME`, `which NAME`)."""

    programs: tuple[str, ...]
    unread: str | None = None
    probed: frozenset[str] = frozenset()


def read_command(command: str) -> Reading:
    """Read `command` as the shell would; see the module's docstring for what is read."""
    found = _Found()
    try:
        tokens, _ = _lex(command, 0, closing=False)
        _Commands(tokens, found).read()
    except _Unread as exc:
        return Reading(tuple(found.programs), str(exc), frozenset(found.probed))
    return Reading(tuple(found.programs), probed=frozenset(found.probed))


@dataclass
class _Found:
    """What the reading found so far: the programs looked up, the names looked for."""

    programs: list[str] = field(default_factory=list)
    probed: set[str] = field(default_factory=set)


class _Unread(Exception):
    """What the reader does not read, as a phrase: 'it has a here-document (<<)'."""


# --- words and operators ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Word:
    """One word: `text` once quotes are removed (expansions left as written), `raw` as
    written; `plain` without any quoting (so it may be a reserved word); `expands` when the
    shell changes it first ($, ~, an unquoted glob); `inner`: its `$(...)` commands."""

    text: str
    raw: str
    plain: bool
    expands: bool
    inner: tuple[tuple[_Token, ...], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class _Op:
    """An operator: a separator, a parenthesis or a redirection."""

    text: str


_Token = _Word | _Op

_ALL_OPERATORS = "&& || ;; ;& |& & ; | (( ( ) <<- <<< << >> <& >& <> >| &>> &> < >"
_OPERATORS = sorted(_ALL_OPERATORS.split(), key=len, reverse=True)  # the longest first
_SEPARATORS = frozenset(["&&", "||", ";", "|", "|&", "&", "\n"])
_REDIRECTIONS = frozenset(["<", ">", ">>", "<&", ">&", "<>", ">|", "&>", "&>>", "<<<"])
_METACHARS = frozenset(" \t\n;&|()<>")


def _lex(text: str, at: int, *, closing: bool) -> tuple[list[_Token], int]:
    """The tokens of `text` from `at`; with `closing`, those of a `$(` up to its `)`, and
    the index after that `)`."""
    tokens: list[_Token] = []
    depth = 0
    while at < len(text):
        char = text[at]
        if text.startswith("\\\n", at) or char in " \t":
            at += 2 if char == "\\" else 1
        elif char == "\n":
            tokens.append(_Op("\n"))
            at += 1
        elif char == "#":
            end = text.find("\n", at)  # a comment, up to the newline
            at = len(text) if end < 0 else end
        elif (op := _operator(text, at)) is not None:
            at += len(op)
            depth += {"(": 1, "((": 2, ")": -1}.get(op, 0)
            if closing and depth < 0:
                return tokens, at
            tokens.append(_Op(op))
        else:
            word, at = _word(text, at)
            if not (word.plain and word.text.isdigit() and text[at : at + 1] in ("<", ">")):
                tokens.append(word)  # (a descriptor's number, as in 2>&1, is no word)
    if closing:
        raise _Unread("a $( is never closed")
    return tokens, at


def _operator(text: str, at: int) -> str | None:
    op = next((op for op in _OPERATORS if text.startswith(op, at)), None)
    if op in ("<<", "<<-"):
        raise _Unread("it has a here-document (<<)")
    if op in ("<", ">") and text.startswith("(", at + 1):
        raise _Unread(f"it has a process substitution ({op}(...))")
    return op


class _WordReader:
    """Reads one word from `at`, character by character, as the shell does."""

    def __init__(self, text: str, at: int) -> None:
        self.source, self.start, self.at = text, at, at
        self.text: list[str] = []
        self.plain, self.expands, self.opened = True, False, ""
        self.inner: list[tuple[_Token, ...]] = []

    def read(self) -> tuple[_Word, int]:
        source = self.source
        while self.at < len(source) and source[self.at] not in _METACHARS:
            char = source[self.at]
            if char == "\\":
                self._backslash()
            elif char == "'":
                self._single_quoted()
            elif char == '"':
                self._double_quoted()
            elif char == "$":
                self._dollar()
            elif char == "`":
                raise _Unread("it has a command substitution in backquotes (`...`)")
            else:
                self._plain_char(char)
        raw = source[self.start : self.at]
        word = _Word("".join(self.text), raw, self.plain, self.expands, tuple(self.inner))
        return word, self.at

    def _plain_char(self, char: str) -> None:
        """An unquoted character: `~` first, `*`, `?`, `[...]` and bash's `{a,b}` make the
        shell expand the word."""
        self.expands |= char in "*?" or (char == "~" and self.at == self.start)
        self.expands |= (char == "]" and "[" in self.opened) or (char == "}" and "{" in self.opened)
        self.opened += char if char in "[{" else ""
        self.text.append(char)
        self.at += 1

    def _backslash(self) -> None:
        self.plain = False
        following = self.source[self.at + 1 : self.at + 2]
        if following != "\n":
            self.text.append(following)
        self.at += 2

    def _single_quoted(self) -> None:
        end = self.source.find("'", self.at + 1)
        if end < 0:
            raise _Unread("a ' quote is never closed")
        self.plain = False
        self.text.append(self.source[self.at + 1 : end])
        self.at = end + 1

    def _double_quoted(self) -> None:
        self.plain = False
        self.at += 1
        source = self.source
        while self.at < len(source) and source[self.at] != '"':
            char = source[self.at]
            if char == "\\" and source[self.at + 1 : self.at + 2] in ('"', "\\", "$", "`", "\n"):
                self._backslash()
            elif char == "$":
                self._dollar()
            elif char == "`":
                raise _Unread("it has a command substitution in backquotes (`...`)")
            else:
                self.text.append(char)
                self.at += 1
        if self.at >= len(source):
            raise _Unread('a " quote is never closed')
        self.at += 1

    def _dollar(self) -> None:
        """`$(...)` (read as commands), `$((...))`, `${...}`, `$NAME`: all expand."""
        source, start = self.source, self.at
        if source.startswith("$((", start):
            self.at = _closing(source, start + 1, "(", ")")
        elif source.startswith("$(", start):
            tokens, self.at = _lex(source, start + 2, closing=True)
            self.inner.append(tuple(tokens))
        elif source.startswith("${", start):
            self.at = _closing(source, start + 1, "{", "}")
        else:
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]", source[start + 1 :])
            self.at = start + 1 + (name.end() if name else 0)
            if name is None:  # a lone $ is a dollar sign
                self.text.append("$")
                return
        self.expands = True
        self.text.append(source[start : self.at])


def _closing(text: str, at: int, opening: str, closing: str) -> int:
    """The index after the `closing` that matches the `opening` at `at` (`${...}`, `$((...))`)."""
    depth = 0
    for index in range(at, len(text)):
        depth += {opening: 1, closing: -1}.get(text[index], 0)
        if depth == 0:
            return index + 1
    raise _Unread(f"a ${opening} is never closed")


def _word(text: str, at: int) -> tuple[_Word, int]:
    return _WordReader(text, at).read()


# --- commands -----------------------------------------------------------------------------------

# Reserved words that open or close a compound command: the commands inside are read.
_KEYWORDS = frozenset(
    ["if", "then", "elif", "else", "fi", "while", "until", "do", "done", "{", "}", "!"]
)
# Built-ins that change nothing for the commands after them, and run no program.
_HARMLESS = frozenset([":", "true", "false", "echo", "printf", "test", "[", "kill", "pwd"])
# Built-ins and reserved words after which the next programs may be found otherwise (or
# not run at all): reading stops there, silently.
_CHANGING_WORDS = """
    . alias bg break builtin cd continue declare esac eval exit export fc fg getopts hash in
    jobs let local newgrp read readonly return set shift source time times trap type typeset
    ulimit umask unalias unset wait ]]
"""
_CHANGING = frozenset(_CHANGING_WORDS.split())
_UNREAD_KEYWORDS = {
    "case": "it has a case statement",  # only where a ( ... ) is skipped (its patterns end in ")")
    "select": "it has a select loop",
    "function": "it defines a function",
    "coproc": "it has a coproc",
}
_SHELLS = frozenset(["sh", "bash", "dash"])
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")


class _Commands:
    """Reads a list of commands run by one shell (a whole command, a `$(...)`, an `sh -c`
    string), adding each program it looks up to `found`."""

    def __init__(self, tokens: list[_Token], found: _Found) -> None:
        self.tokens, self.found = tokens, found
        self.at, self.depth = 0, 0  # depth: of ( subshells

    def read(self) -> None:
        """Read every command; after one that changes what follows, go on only after the
        subshell it is in, if any."""
        while (token := self._peek()) is not None:
            if not self._command(token) and not self._leave_subshell():
                return

    def _peek(self, ahead: int = 0) -> _Token | None:
        index = self.at + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def _command(self, token: _Token) -> bool:
        """Read what starts at `token` (an operator, a keyword or a simple command); False
        when the commands after it cannot be judged."""
        if isinstance(token, _Op):
            return self._operator(token.text)
        if token.plain and token.text in _KEYWORDS:
            self.at += 1
            return True
        if token.plain and token.text == "case":
            return self._case()
        if token.plain and token.text in _UNREAD_KEYWORDS:
            raise _Unread(_UNREAD_KEYWORDS[token.text])
        if token.plain and token.text == "for":
            return self._for()
        if token.plain and token.text == "[[":
            return self._test()
        if self._peek(1) == _Op("(") and _ASSIGNMENT.fullmatch(token.raw):
            raise _Unread("it assigns a bash array (NAME=(...))")
        if self._peek(1) == _Op("("):
            raise _Unread(_UNREAD_KEYWORDS["function"])
        return self._simple()

    def _operator(self, op: str) -> bool:
        self.at += 1
        if op == "(":
            self.depth += 1
        elif op == ")":
            self.depth -= 1
            if self.depth < 0:
                raise _Unread("a ) closes nothing")
        elif op == "((":
            raise _Unread("it has an arithmetic command ((...))")
        elif op in _REDIRECTIONS:
            self._redirection_target()
        elif op not in _SEPARATORS:
            raise _Unread(f"{op} outside a case statement")
        return True

    def _redirection_target(self) -> None:
        target = self._peek()
        if not isinstance(target, _Word):
            raise _Unread("a redirection names no file")
        self._inner(target)
        self.at += 1

    def _inner(self, word: _Word) -> None:
        """Read the commands of the `$(...)` in `word`: they run first, in a subshell."""
        for tokens in word.inner:
            _Commands(list(tokens), self.found).read()

    def _words(self) -> list[_Word]:
        """The words of the simple command here, up to its end; its redirections skipped."""
        words: list[_Word] = []
        while (token := self._peek()) is not None:
            if isinstance(token, _Op) and token.text in _REDIRECTIONS:
                self.at += 1
                self._redirection_target()
            elif isinstance(token, _Op):
                break
            else:
                self._inner(token)
                words.append(token)
                self.at += 1
        return words

    def _simple(self) -> bool:
        return _Program(self.found).shell_command(self._words())

    def _for(self) -> bool:
        """`for NAME [in WORDS]; do`: the words run nothing but their `$(...)`."""
        name = self._peek(1)
        if isinstance(name, _Word) and name.text == "PATH":
            return False
        self.at += 2
        while (token := self._peek()) is not None:
            if isinstance(token, _Word) and token.plain and token.text == "do":
                return True
            if isinstance(token, _Word):
                self._inner(token)
            self.at += 1
        raise _Unread("a for loop without do")

    def _case(self) -> bool:
        """`case WORD in [(]PATTERN[|PATTERN]...) COMMANDS ;; ... esac`: the commands of every
        clause; the word and the patterns run nothing but their `$(...)`."""
        self.at += 1
        subject = self._peek()
        if not isinstance(subject, _Word):
            raise _Unread("a case without a word")
        self._inner(subject)
        self.at += 1
        self._skip_newlines()
        if not self._at_word("in"):
            raise _Unread("a case without in")
        self.at += 1
        while True:
            self._skip_newlines()
            if self._at_word("esac"):
                self.at += 1
                return True
            self._pattern()
            if not self._clause():
                return False

    def _pattern(self) -> None:
        """`[(]PATTERN[|PATTERN]...)` of a case clause."""
        if self._peek() == _Op("("):
            self.at += 1
        while isinstance(word := self._peek(), _Word):
            self._inner(word)
            self.at += 1
            if self._peek() == _Op(")"):
                self.at += 1
                return
            if self._peek() != _Op("|"):
                break
            self.at += 1
        raise _Unread("a case pattern without ) (a case inside $(...) is not read)")

    def _clause(self) -> bool:
        """The commands of a case clause, up to its `;;` (or `;&`) or the `esac`; False when
        the commands after one cannot be judged."""
        while (token := self._peek()) is not None:
            if token in (_Op(";;"), _Op(";&")):
                self.at += 1
                return True
            if self._at_word("esac"):
                return True
            if not self._command(token):
                return False
        raise _Unread("a case without esac")

    def _at_word(self, text: str) -> bool:
        token = self._peek()
        return isinstance(token, _Word) and token.plain and token.text == text

    def _skip_newlines(self) -> None:
        while self._peek() == _Op("\n"):
            self.at += 1

    def _test(self) -> bool:
        """`[[ ... ]]`: its && and || are the test's, not the shell's."""
        while (token := self._peek()) is not None:
            self.at += 1
            if isinstance(token, _Word):
                self._inner(token)
                if token.plain and token.text == "]]":
                    return True
        raise _Unread("a [[ without ]]")

    def _leave_subshell(self) -> bool:
        """Skip to the end of the ( subshell reading stopped in: False if it is in none."""
        if self.depth == 0:
            return False
        depth = self.depth
        while (token := self._peek()) is not None and self.depth >= depth:
            self.at += 1
            if isinstance(token, _Word) and token.plain and token.text == "case":
                raise _Unread(_UNREAD_KEYWORDS["case"])  # its patterns end in )
            if isinstance(token, _Op):
                self.depth += {"(": 1, "((": 2, ")": -1}.get(token.text, 0)
        return self.depth < depth


class _Program:
    """The program of one simple command, past what runs it: built-ins, prefixes, shells."""

    def __init__(self, found: _Found) -> None:
        self.found = found

    def shell_command(self, words: list[_Word]) -> bool:
        """Judge a simple command as the shell runs it; False when the commands after it
        cannot be judged."""
        words, path_changed = _past_assignments(words)
        if not words:
            return not path_changed  # `PATH=...` alone: the next ones look elsewhere
        name = words[0].text
        if words[0].expands:
            return False  # found only once the shell expands it
        if path_changed:
            self.external(words, path_known=False)
            return True
        if name in _HARMLESS:
            return True
        if name == "exec":
            rest = _options(words[1:], frozenset(["-a"]))[1]
            self.external(rest, path_known=True)
            return not rest  # `exec >FILE` goes on; nothing runs after `exec PROGRAM`
        if name == "command":
            return self._command(words[1:])
        if name in _CHANGING or name in _KEYWORDS:
            return False
        self.external(words, path_known=True)
        return True

    def _command(self, words: list[_Word]) -> bool:
        """`command [-p] [-v|-V] NAME ...`: -v and -V only look (NAME is probed); -p looks in
        another PATH."""
        flags, rest = _options(words, frozenset())
        letters = "".join(flag[1:] for flag in flags)
        if set(letters) & set("vV"):
            self.found.probed.update(word.text for word in rest if not word.expands)
        if set(letters) & set("vVp"):
            return True
        return self.shell_command(rest)

    def external(self, words: list[_Word], *, path_known: bool) -> None:
        """Judge `words` as a program started by name (no built-ins): itself, then what it
        starts in turn. Without `path_known` (another PATH), only a name with a / is judged."""
        if not words or words[0].expands:
            return
        name = words[0].text
        if not path_known and "/" not in name:
            return
        self.found.programs.append(name)
        base = name.rsplit("/", 1)[-1]
        if base == "which":
            names = _options(words[1:], frozenset())[1]
            self.found.probed.update(word.text for word in names if not word.expands)
        elif base in _SHELLS:
            self._shell(words[1:])
        elif base in _WRAPPERS:
            rest, known = _WRAPPERS[base](words[1:])
            self.external(rest, path_known=known and path_known)

    def _shell(self, words: list[_Word]) -> None:
        """`sh -c STRING`: STRING is read too, as the commands of a new shell."""
        flags, rest = _options(words, frozenset(["-o", "+o"]))
        letters = "".join(flag[1:] for flag in flags)
        if "c" not in letters or not rest:
            return  # a script file, or standard input
        if set(letters) - set("ceuxvfo") or any(flag.startswith("--") for flag in flags):
            return  # a login or interactive shell (its profile may change PATH), -n, ...
        string = rest[0]
        if string.expands:
            raise _Unread(
                "its sh -c string holds an expansion ($...) that the outer shell makes first"
            )
        tokens, _ = _lex(string.text, 0, closing=False)
        _Commands(tokens, self.found).read()


def _past_assignments(words: list[_Word]) -> tuple[list[_Word], bool]:
    """`words` past their VAR=value words, and whether one of those sets PATH."""
    path_changed = False
    while words and (match := _ASSIGNMENT.match(words[0].raw)):
        path_changed |= match.group(1) == "PATH"
        words = words[1:]
    return words, path_changed


def _options(words: list[_Word], takes_value: frozenset[str]) -> tuple[list[str], list[_Word]]:
    """The leading options of `words` (without the values of those in `takes_value`), and
    the words after them (and after a `--`)."""
    flags: list[str] = []
    while words and words[0].text.startswith(("-", "+")) and words[0].text not in ("-", "+"):
        flag, words = words[0].text, words[1:]
        if flag == "--":
            break
        flags.append(flag)
        if flag in takes_value:
            words = words[1:]
    return flags, words


def _env(words: list[_Word]) -> tuple[list[_Word], bool]:
    """`env [-i] [-u NAME] [NAME=value ...] PROGRAM`; with -i or a PATH= word, the program
    is found in another PATH."""
    flags, rest = _options(words, frozenset(["-u", "--unset"]))
    if set(flags) - {"-i", "--ignore-environment", "-u", "--unset", "-0", "--null", "-v"}:
        return [], False  # -S splits a string, -C changes directory: not read
    rest, path_changed = _past_assignments(rest)
    return rest, not path_changed and not set(flags) & {"-i", "--ignore-environment"}


def _nice(words: list[_Word]) -> tuple[list[_Word], bool]:
    """`nice [-n N | -N | --adjustment=N] PROGRAM`."""
    return _options(words, frozenset(["-n", "--adjustment"]))[1], True


def _timeout(words: list[_Word]) -> tuple[list[_Word], bool]:
    """`timeout [OPTIONS] DURATION PROGRAM`."""
    rest = _options(words, frozenset(["-s", "-k", "--signal", "--kill-after"]))[1]
    return rest[1:], True


def _plain_prefix(words: list[_Word]) -> tuple[list[_Word], bool]:
    """`nohup PROGRAM`, `setsid [-c -f -w] PROGRAM`."""
    return _options(words, frozenset())[1], True


_SUDO_VALUES = frozenset(["-u", "-g", "-C", "-h", "-p", "-r", "-t", "-U", "-D", "-T", "-R"])


def _sudo(words: list[_Word]) -> tuple[list[_Word], bool]:
    """`sudo [OPTIONS] [NAME=value ...] PROGRAM`: sudo finds PROGRAM in its own secure_path,
    so only a name with a / is judged (never one for -i, -s, -e, -l: a shell, an editor...)."""
    flags, rest = _options(words, _SUDO_VALUES)
    if any(flag.startswith("--") or set(flag[1:]) & set("isel") for flag in flags):
        return [], False
    return _past_assignments(rest)[0], False


_WRAPPERS = {
    "env": _env,
    "nice": _nice,
    "timeout": _timeout,
    "nohup": _plain_prefix,
    "setsid": _plain_prefix,
    "sudo": _sudo,
}
