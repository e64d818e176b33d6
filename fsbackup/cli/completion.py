"""`fsbackup completion SHELL`: a completion script for bash, zsh or fish, generated from the
argument parser itself, so it knows every command and option this fsbackup has.

What it completes: command names (and the actions of `key`), each command's options, an option's
value where the parser knows them (choices), files where a value or argument is a path (its
metavar is FILE, DIR, PATH or MOUNTPOINT; a PATH inside a version is completed as a local path,
which is what it usually is), and 'latest' where a VERSION is asked for.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import NamedTuple

from .options import PROG, Command
from .output import Output

SHELLS = ("bash", "zsh", "fish")
FILE_METAVARS = {"FILE", "PATH"}
DIR_METAVARS = {"DIR", "MOUNTPOINT"}


class Option(NamedTuple):
    names: list[str]
    help: str             # its first sentence ('' when hidden from --help: still completed as a value)
    value: str            # "flag", "files", "dirs", "any" or "choices"
    choices: list[str]
    shown: bool           # in --help (a hidden option is not offered, but its value is completed)


class Positional(NamedTuple):
    metavar: str
    value: str            # "files", "dirs", "versions", "any" or "choices"
    choices: list[str]
    nargs: object


class Spec(NamedTuple):
    """A command (the program itself at the top): its options, arguments and sub-commands."""
    name: str
    help: str
    options: list[Option]
    positionals: list[Positional]
    commands: list["Spec"]


def _first_sentence(text: str | None) -> str:
    if not text or text == argparse.SUPPRESS:
        return ""
    text = " ".join(text.split()).replace("%%", "%")
    return re.split(r"(?<=[a-z)])(?<!e\.g)(?<!i\.e)[.;] ", text, maxsplit=1)[0].rstrip(".")


def _kind(metavar: str | None, choices) -> str:
    if choices is not None:
        return "choices"
    if metavar in FILE_METAVARS:
        return "files"
    if metavar in DIR_METAVARS:
        return "dirs"
    if metavar and metavar.startswith("VERSION"):
        return "versions"
    return "any"


def describe(parser: argparse.ArgumentParser, name: str = PROG, help: str = "") -> Spec:
    """The completion-relevant parts of `parser` and its sub-parsers."""
    options, positionals, commands = [], [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            commands = [describe(sub, command, _first_sentence(helps.get(command)))
                        for command, sub in action.choices.items()]
        elif action.option_strings:
            metavar = action.metavar if isinstance(action.metavar, str) else None
            value = "flag" if action.nargs == 0 else _kind(metavar, action.choices)
            if value == "versions":
                value = "any"
            options.append(Option(list(action.option_strings), _first_sentence(action.help), value,
                                  [str(c) for c in action.choices or ()], action.help != argparse.SUPPRESS))
        else:
            metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            positionals.append(Positional(metavar, _kind(metavar, action.choices),
                                          [str(c) for c in action.choices or ()], action.nargs))
    return Spec(name, help, options, positionals, commands)


def _words(items) -> str:
    return " ".join(items)


def _squote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# ---- bash ---------------------------------------------------------------------------------------

def bash_script(spec: Spec) -> str:
    """A bash script defining _fsbackup (`complete -F`): it finds the command (and action) among
    the words typed so far, skipping options and their values, then completes an option's value,
    the command's options, or its sub-commands and arguments."""
    values: list[str] = []
    every: list[str] = []
    listed: list[str] = []
    subs: list[str] = []
    args: list[str] = []
    globals = {o.names[0] for o in spec.options}

    def add(s: Spec, path: str) -> None:
        offered = _words(n for o in s.options if o.shown for n in o.names)
        listed.append(f"        {_squote(path)}) echo {_squote(offered)} ;;")
        if s.commands:
            subs.append(f"        {_squote(path)}) echo {_squote(_words(c.name for c in s.commands))} ;;")
        kinds = sorted({p.value for p in s.positionals if p.value in ("files", "dirs", "versions")})
        words = [c for p in s.positionals if p.value == "choices" and not s.commands for c in p.choices]
        if kinds or words:
            args.append(f"        {_squote(path)}) echo {_squote(_words(kinds + ['--'] + words))} ;;")
        for o in s.options:
            if o.value != "flag" and (not path or o.names[0] not in globals):
                # (the global options, which every command takes too, once for all of them: last)
                value = "choices " + _words(o.choices) if o.value == "choices" else o.value
                pattern = "|".join(_squote(f"{path}|") + n if path else "*" + _squote(f"|{n}") for n in o.names)
                (values if path else every).append(f"        {pattern}) echo {_squote(value)} ;;")
        for c in s.commands:
            add(c, f"{path} {c.name}".strip())
    add(spec, "")
    values += every
    return f"""\
# {PROG} completion for bash, generated by '{PROG} completion bash' (docs/everyday.md)

_fsbackup_value() {{   # COMMAND OPTION: flag, files, dirs, any, or "choices WORD..."
    case "$1|$2" in
{chr(10).join(values)}
        *) echo flag ;;
    esac
}}

_fsbackup_options() {{   # COMMAND: its options
    case "$1" in
{chr(10).join(listed)}
    esac
}}

_fsbackup_commands() {{   # COMMAND: its sub-commands
    case "$1" in
{chr(10).join(subs)}
    esac
}}

_fsbackup_arguments() {{   # COMMAND: what its arguments are (files dirs versions) -- WORD...
    case "$1" in
{chr(10).join(args)}
    esac
}}

_fsbackup() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} cmd="" i w value kinds
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        case $w in
            -*=*) ;;
            -*) [[ $(_fsbackup_value "$cmd" "$w") != flag ]] && ((i++)) ;;
            *) [[ " $(_fsbackup_commands "$cmd") " == *" $w "* ]] && cmd="${{cmd:+$cmd }}$w" ;;
        esac
    done
    if ((COMP_CWORD > 1)) && [[ ${{COMP_WORDS[COMP_CWORD-1]}} == -* ]]; then
        value=$(_fsbackup_value "$cmd" "${{COMP_WORDS[COMP_CWORD-1]}}")
        case $value in
            files) compopt -o filenames 2>/dev/null; local IFS=$'\\n'; COMPREPLY=($(compgen -f -- "$cur")); return ;;
            dirs) compopt -o filenames 2>/dev/null; local IFS=$'\\n'; COMPREPLY=($(compgen -d -- "$cur")); return ;;
            any) return ;;
            choices\\ *) COMPREPLY=($(compgen -W "${{value#choices }}" -- "$cur")); return ;;
        esac
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_fsbackup_options "$cmd")" -- "$cur"))
        return
    fi
    kinds=" $(_fsbackup_arguments "$cmd") "
    COMPREPLY=($(compgen -W "$(_fsbackup_commands "$cmd") ${{kinds#* -- }}" -- "$cur"))
    [[ $kinds == *" versions "* ]] && COMPREPLY+=($(compgen -W latest -- "$cur"))
    if [[ $kinds == *" files "* || $kinds == *" dirs "* ]]; then
        compopt -o filenames 2>/dev/null
        local IFS=$'\\n'
        if [[ $kinds == *" files "* ]]; then
            COMPREPLY+=($(compgen -f -- "$cur"))
        else
            COMPREPLY+=($(compgen -d -- "$cur"))
        fi
    fi
}}

complete -F _fsbackup {PROG}
"""


# ---- zsh ----------------------------------------------------------------------------------------

def _zsh_escape(text: str) -> str:
    """`text` inside an _arguments spec in single quotes."""
    return re.sub(r"([\[\]:\\])", r"\\\1", text).replace("'", "'\\''")


def _zsh_action(value: str, choices: list[str]) -> str:
    return {"files": "_files", "dirs": "_files -/", "versions": "(latest)", "any": " "}.get(
        value, "(" + " ".join(choices) + ")")


def _zsh_name(path: list[str]) -> str:
    return "_fsbackup" + "".join("_" + re.sub(r"\W", "_", p) for p in path)


def _zsh_function(s: Spec, path: list[str], out: list[str]) -> None:
    name = _zsh_name(path)
    specs = []
    for o in s.options:
        help = _zsh_escape(o.help)
        for n in o.names:
            if o.value == "flag":
                specs.append(f"'*{n}[{help}]'")
            else:
                sep = "+" if len(n) == 2 else "="
                specs.append(f"'*{n}{sep}[{help}]:{_zsh_escape(o.value)}:{_zsh_action(o.value, o.choices)}'")
    if s.commands:
        specs += ["'1: :->commands'", "'*:: :->arguments'"]
    else:
        position = 0
        for p in s.positionals:
            action = _zsh_action(p.value, p.choices)
            if p.nargs in ("*", "+"):
                specs.append(f"'*:{_zsh_escape(p.metavar)}:{action}'")
                break
            position += 1
            optional = ":" if p.nargs == "?" else ""
            specs.append(f"'{position}:{optional}{_zsh_escape(p.metavar)}:{action}'")
    out.append(f"{name}() {{")
    out.append("    local curcontext=$curcontext state line")
    out.append("    _arguments -C -s \\\n        " + " \\\n        ".join(specs))
    if s.commands:
        described = " ".join(_squote(f"{c.name}:{c.help}") for c in s.commands)
        out.append("    case $state in")
        out.append(f"        commands) local -a commands=({described}); _describe command commands ;;")
        out.append("        arguments) case $words[1] in")
        for c in s.commands:
            out.append(f"            {c.name}) {_zsh_name(path + [c.name])} ;;")
        out.append("        esac ;;")
        out.append("    esac")
    out.append("}")
    out.append("")
    for c in s.commands:
        _zsh_function(c, path + [c.name], out)


def zsh_script(spec: Spec) -> str:
    """A zsh completion function (_arguments for each command), to be put in a folder of $fpath
    as `_fsbackup`, or sourced after compinit."""
    out = [f"#compdef {PROG}", f"# {PROG} completion for zsh, generated by '{PROG} completion zsh' "
           "(docs/everyday.md)", ""]
    _zsh_function(spec, [], out)
    out.append('if [[ $zsh_eval_context[-1] == loadautofunc ]]; then')
    out.append('    _fsbackup "$@"')
    out.append("else")
    out.append(f"    compdef _fsbackup {PROG}")
    out.append("fi")
    return "\n".join(out) + "\n"


# ---- fish ---------------------------------------------------------------------------------------

def _fish_lines(s: Spec, path: list[str], out: list[str], globals: set[str]) -> None:
    if path:
        condition = "; and ".join(f"__fish_seen_subcommand_from {p}" for p in path)
    else:
        condition = "__fish_use_subcommand"
    if s.commands:
        names = " ".join(c.name for c in s.commands)
        where = condition if not path else f"{condition}; and not __fish_seen_subcommand_from {names}"
        for c in s.commands:
            out.append(f"complete -c {PROG} -n {_squote(where)} -f -a {c.name} -d {_squote(c.help)}")
    where_options = "true" if not path else condition
    for o in s.options:
        if path and (o.names[0] in globals or not o.shown):
            continue           # the global options, which every command takes too: once, at the top
        flags = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in o.names)
        value = {"flag": "", "files": " -r -F", "dirs": " -r -a '(__fish_complete_directories)'",
                 "any": " -x"}.get(o.value, f" -x -a {_squote(' '.join(o.choices))}")
        out.append(f"complete -c {PROG} -n {_squote(where_options)} {flags}{value} -d {_squote(o.help)}")
    if path and not s.commands:
        kinds = {p.value for p in s.positionals}
        if "files" in kinds:
            out.append(f"complete -c {PROG} -n {_squote(condition)} -F")
        elif "dirs" in kinds:
            out.append(f"complete -c {PROG} -n {_squote(condition)} -a '(__fish_complete_directories)'")
        if "versions" in kinds:
            out.append(f"complete -c {PROG} -n {_squote(condition)} -a latest -d 'the newest version'")
        for p in s.positionals:
            if p.value == "choices":
                out.append(f"complete -c {PROG} -n {_squote(condition)} -a {_squote(' '.join(p.choices))}")
    for c in s.commands:
        _fish_lines(c, path + [c.name], out, globals)


def fish_script(spec: Spec) -> str:
    """`complete` lines for fish: a command's options and arguments once its name is typed."""
    out = [f"# {PROG} completion for fish, generated by '{PROG} completion fish' (docs/everyday.md)",
           f"complete -c {PROG} -f"]
    _fish_lines(spec, [], out, {o.names[0] for o in spec.options})
    return "\n".join(out) + "\n"


SCRIPTS = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}


def add_arguments(p) -> None:
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")


def run(args, out: Output) -> int:
    from . import build_parser
    sys.stdout.write(SCRIPTS[args.shell](describe(build_parser())))
    return 0


COMMAND = Command(
    "completion", "print a shell completion script (bash, zsh or fish)",
    "Print the completion script for SHELL: commands, their options, option values where they\n"
    "are known, files for paths, 'latest' for a version. Where to put it (docs/everyday.md):\n\n"
    "  bash: fsbackup completion bash > ~/.local/share/bash-completion/completions/fsbackup\n"
    "  zsh:  fsbackup completion zsh > ~/.zfunc/_fsbackup     (with fpath=(~/.zfunc $fpath)\n"
    "        before compinit in ~/.zshrc)\n"
    "  fish: fsbackup completion fish > ~/.config/fish/completions/fsbackup.fish\n\n"
    "Or for the current shell only: source <(fsbackup completion bash), and in fish:\n"
    "fsbackup completion fish | source",
    add_arguments, run)
