""".dockerignore: which files of the build context a build may see, by Docker's rules
(https://docs.docker.com/build/concepts/context/#dockerignore-files; moby's
patternmatcher):

  - one pattern a line; `#` starts a comment line; blank lines are skipped;
  - a pattern is cleaned (Go's filepath.Clean) and a leading `/` dropped: patterns are
    relative to the context's root, never matched against a base name alone;
  - Go's filepath.Match syntax: `*` any run of non-separators, `?` one non-separator,
    `[a-z]` / `[^a-z]` classes, `\\` escapes; `**` any number of directories;
  - a pattern matches a path or any of its parent directories;
  - `!pattern` re-includes; the last pattern that matches decides.
"""

import os
import posixpath
import re
from pathlib import Path

from labkit.errors import ImageError


class Pattern:
    def __init__(self, text: str, source: str):
        self.exclusion = text.startswith("!")
        body = text[1:].strip() if self.exclusion else text
        body = posixpath.normpath(body).lstrip("/") if body else body
        if body in ("", "."):
            body = "."
        self.text = body
        self.regex = re.compile(_translate(body, source))

    def matches(self, path: str) -> bool:
        if self.regex.fullmatch(path):
            return True
        # a match of a parent directory counts (moby: MatchesOrParentMatches)
        parent = posixpath.dirname(path)
        while parent:
            if self.regex.fullmatch(parent):
                return True
            parent = posixpath.dirname(parent)
        return False


def _translate(pattern: str, source: str) -> str:
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            if pattern.startswith("**", index):
                index += 2
                if pattern.startswith("/", index):  # **/ : zero or more directories
                    index += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\":
            index += 1
            if index >= len(pattern):
                raise ImageError(f"{source}: pattern {pattern!r} ends with a lone '\\' (Go's filepath.Match: bad pattern)")
            out.append(re.escape(pattern[index]))
        elif char == "[":
            end = pattern.find("]", index + 2 if pattern.startswith("[^", index) else index + 1)
            if end < 0:
                raise ImageError(f"{source}: pattern {pattern!r} has an unclosed '[' (Go's filepath.Match: bad pattern)")
            body = pattern[index + 1:end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append("[" + ("^/" if negate else "") + body.replace("\\", "\\\\") + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


class DockerIgnore:
    def __init__(self, patterns: list):
        self.patterns = patterns

    @classmethod
    def read(cls, context: Path) -> "DockerIgnore":
        path = Path(context) / ".dockerignore"
        if not path.is_file():
            return cls([])
        patterns = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            patterns.append(Pattern(line, f"{path} line {number}"))
        return cls(patterns)

    def excludes(self, path: str) -> bool:
        """`path`, relative to the context with '/' separators: is it left out?"""
        excluded = False
        for pattern in self.patterns:
            if pattern.exclusion != excluded:
                continue  # cannot change the verdict
            if pattern.matches(path):
                excluded = not pattern.exclusion
        return excluded

    def may_hold_included(self, directory: str) -> bool:
        """An excluded directory may still hold a file an exception re-includes
        (`!dir/keep`): then it must be walked."""
        return any(p.exclusion and (p.text.startswith(directory + "/") or "*" in p.text or "?" in p.text
                                    or "[" in p.text) for p in self.patterns)


def copy_context(context: Path, target: Path, ignore: DockerIgnore, leave_out=()) -> None:
    """Copy what `ignore` lets through of `context` into the empty dir `target`:
    directories, regular files and symbolic links (as links: never followed).

    `target` itself and the directories in `leave_out` (labkit's own home, when a context
    holds it) are never entered: the copy is made inside the home's scratch, so a context
    above the home would otherwise copy its own copy until a name grows too long, and the
    store's layers (setuid files among them) are no build's input."""
    never = {(st.st_dev, st.st_ino) for st in map(_stat_or_none, (target, *leave_out)) if st is not None}
    walked_only = []  # excluded directories walked for an exception: kept only if not empty
    for directory, dirs, files in os.walk(context):
        relative_dir = os.path.relpath(directory, context)
        relative_dir = "" if relative_dir == "." else relative_dir
        kept_dirs = []
        for name in sorted(dirs):
            relative = posixpath.join(relative_dir, name)
            path = os.path.join(directory, name)
            if os.path.islink(path):
                files.append(name)  # os.walk lists a link to a directory among dirs
                continue
            found = os.lstat(path)
            if (found.st_dev, found.st_ino) in never:
                continue
            if ignore.excludes(relative):
                if not ignore.may_hold_included(relative):
                    continue
                walked_only.append(relative)
            os.mkdir(target / relative)
            os.chmod(target / relative, os.stat(path).st_mode & 0o7777)
            kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(files):
            relative = posixpath.join(relative_dir, name)
            if ignore.excludes(relative):
                continue
            path = os.path.join(directory, name)
            if os.path.islink(path):
                os.symlink(os.readlink(path), target / relative)
            elif os.path.isfile(path):
                with open(path, "rb") as source, open(target / relative, "wb") as copy:
                    while chunk := source.read(1 << 20):
                        copy.write(chunk)
                os.chmod(target / relative, os.stat(path).st_mode & 0o7777)
    for relative in reversed(walked_only):
        try:
            os.rmdir(target / relative)
        except OSError:
            pass  # it holds what an exception let in


def _stat_or_none(path):
    try:
        return os.stat(path)
    except OSError:
        return None
