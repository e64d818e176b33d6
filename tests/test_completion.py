"""`fsbackup completion SHELL`: each script, loaded into the real shell, completes commands, options,
option values and files as the argument parser defines them."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fsbackup.cli import build_parser
from fsbackup.cli.completion import describe

# zsh completes only in its line editor: a pseudo-terminal (zsh/zpty) runs an interactive zsh that
# loads the function through compinit, and every word completion offers is written to a file.
ZSH_CAPTURE = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PROMPT=; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "bindkey '^I' complete-word"
zpty -w z "compadd () { local -a hits; builtin compadd -O hits \"\$@\"; print -rl -- \$hits >> $2;
  builtin compadd \"\$@\"; }"
zpty -w z 'comppostfuncs=(exit)'
zpty -w z "$3"$'\t'
integer n=0
while zpty -t z && (( n++ < 200 )); do zpty -r -t z line 2>/dev/null; sleep 0.05; done
zpty -d z 2>/dev/null
"""

BACKUP = next(c for c in describe(build_parser()).commands if c.name == "backup")
EXCLUDE_OPTIONS = sorted(n for o in BACKUP.options for n in o.names if n.startswith("--exc"))


def script(env, shell: str, tmp_path: Path) -> Path:
    path = tmp_path / ("_fsbackup" if shell == "zsh" else f"fsbackup.{shell}")
    path.write_text(env.ok("completion", shell).out)
    return path


def bash_complete(completion: Path, *words: str) -> list[str]:
    """What the completion function puts in COMPREPLY for the command line `words` (the last one
    being completed)."""
    array = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    p = subprocess.run(["bash", "-c", f"source {completion}; COMP_WORDS=({array}); "
                        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _fsbackup; printf '%s\\n' \"${COMPREPLY[@]}\""],
                       capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr, p.stderr
    return sorted(line for line in p.stdout.splitlines() if line)


def fish_complete(completion: Path, line: str) -> list[str]:
    p = subprocess.run(["fish", "-c", f"source {completion}; complete -C'{line}'"], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr, p.stderr
    return sorted(row.split("\t")[0] for row in p.stdout.splitlines())


def zsh_complete(completion: Path, line: str, tmp_path: Path) -> list[str]:
    offered = tmp_path / "offered"
    offered.unlink(missing_ok=True)
    capture = tmp_path / "capture.zsh"
    capture.write_text(ZSH_CAPTURE)
    subprocess.run(["zsh", "-f", capture, completion.parent, offered, line], timeout=60, check=True)
    return sorted(set(offered.read_text().split())) if offered.exists() else []


def test_the_exclude_options_are_known():
    assert EXCLUDE_OPTIONS == ["--exclude", "--exclude-caches", "--exclude-file", "--exclude-if-present",
                               "--exclude-larger-than"]


def test_bash_completes_commands_options_values_and_files(env, tmp_path):
    completion = script(env, "bash", tmp_path)
    assert bash_complete(completion, "fsbackup", "re") == ["repair", "restore"]
    assert bash_complete(completion, "fsbackup", "backup", "--exc") == EXCLUDE_OPTIONS
    assert bash_complete(completion, "fsbackup", "--repo", "/mnt/x", "re") == ["repair", "restore"]
    assert bash_complete(completion, "fsbackup", "dump", "--archive", "") == ["tar", "zip"]
    assert bash_complete(completion, "fsbackup", "key", "") == ["add", "list", "passwd", "remove"]
    assert bash_complete(completion, "fsbackup", "completion", "") == ["bash", "fish", "zsh"]
    (tmp_path / "notes.txt").write_text("")
    assert bash_complete(completion, "fsbackup", "backup", str(tmp_path / "no")) == [str(tmp_path / "notes.txt")]
    assert bash_complete(completion, "fsbackup", "dump", "-o", str(tmp_path / "no")) == [str(tmp_path / "notes.txt")]
    assert "latest" in bash_complete(completion, "fsbackup", "ls", "")
    assert bash_complete(completion, "fsbackup", "backup", "--volume-size", "") == []     # a size: nothing to offer


def test_fish_completes_commands_options_and_values(env, tmp_path):
    completion = script(env, "fish", tmp_path)
    assert subprocess.run(["fish", "-n", completion]).returncode == 0
    assert fish_complete(completion, "fsbackup re") == ["repair", "restore"]
    assert fish_complete(completion, "fsbackup backup --exc") == EXCLUDE_OPTIONS
    assert fish_complete(completion, "fsbackup dump --archive ") == ["tar", "zip"]
    assert fish_complete(completion, "fsbackup key ") == ["add", "list", "passwd", "remove"]
    assert "--repo" in fish_complete(completion, "fsbackup restore --re")
    (tmp_path / "notes.txt").write_text("")
    assert fish_complete(completion, f"fsbackup backup {tmp_path}/no") == [f"{tmp_path}/notes.txt"]


def test_zsh_completes_commands_options_and_values(env, tmp_path):
    completion = script(env, "zsh", tmp_path)
    assert subprocess.run(["zsh", "-n", completion]).returncode == 0
    assert zsh_complete(completion, "fsbackup re", tmp_path) == ["repair", "restore"]
    assert zsh_complete(completion, "fsbackup backup --exc", tmp_path) == EXCLUDE_OPTIONS
    assert zsh_complete(completion, "fsbackup dump --archive ", tmp_path) == ["tar", "zip"]
    assert zsh_complete(completion, "fsbackup key ", tmp_path) == ["add", "list", "passwd", "remove"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_every_command_is_in_every_script(env, tmp_path, shell):
    text = script(env, shell, tmp_path).read_text()
    for command in describe(build_parser()).commands:
        assert command.name in text, command.name


def test_an_unknown_shell_is_a_usage_error(env):
    r = env.run("completion", "tcsh")
    assert r.rc == 2 and len(r.err.splitlines()) == 1 and "tcsh" in r.err, r.err
