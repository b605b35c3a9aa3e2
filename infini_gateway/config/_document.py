"""
A configuration document being checked: where each key is, and the problems
found so far.
"""

from typing import Any, List, Optional, Sequence, Tuple

from infini_gateway.config._yaml import LineList, LineMap

Path = Tuple[Any, ...]


def format_path(path: Sequence[Any]) -> str:
    """C{("entry", 1, "network", "binding")} -> C{"entry[1].network.binding"}."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class Document:
    """
    A parsed configuration document, and where things are in it.

    @ivar source: the file name messages start with.
    @ivar data: the document: L{LineMap}/L{LineList} when read from YAML,
        plain dicts and lists (and no lines) when built in code.
    @ivar root_line: the line the document starts on, when read from YAML.
    """

    def __init__(self, source: str, data: Any, line: Optional[int] = None) -> None:
        self.source = source
        self.data = data
        self.root_line = line
        self._problems: List[Tuple[int, Tuple[int, ...], str]] = []

    def line(self, path: Sequence[Any]) -> Optional[int]:
        """The line of the key or item at C{path} (of its container, if missing)."""
        node = self.data
        line = self.root_line
        for part in path:
            lines = getattr(node, "lines", None)
            if isinstance(node, LineMap) and part in lines:
                line = lines[part]
            elif (
                isinstance(node, LineList)
                and isinstance(part, int)
                and part < len(lines)
            ):
                line = lines[part]
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        return line

    def _order(self, path: Sequence[Any]) -> Tuple[int, ...]:
        order = []
        node = self.data
        for part in path:
            if isinstance(node, dict):
                keys = list(node)
                order.append(keys.index(part) if part in keys else len(keys))
            elif isinstance(node, list) and isinstance(part, int):
                order.append(part)
            else:
                break
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        return tuple(order)

    def where(self, path: Sequence[Any], line: Optional[int] = None) -> str:
        """C{FILE:LINE: KEY.PATH}, or C{FILE: KEY.PATH} without lines."""
        if line is None:
            line = self.line(path)
        prefix = self.source if line is None else f"{self.source}:{line}"
        return f"{prefix}: {format_path(path)}" if path else prefix

    def problem(self, path: Sequence[Any], text: str) -> None:
        """Record what was expected at C{path}."""
        self.add(self.line(path), path, text)

    def add(self, line: Optional[int], path: Sequence[Any], text: str) -> None:
        """Record a problem at C{path}, on a line given explicitly."""
        message = f"{self.where(path, line)}: {text}"
        if all(message != known for _, _, known in self._problems):
            self._problems.append((line or 0, self._order(path), message))

    def problems(self) -> List[str]:
        """The problems recorded, in file order."""
        return [m for _, _, m in sorted(self._problems, key=lambda p: p[:2])]


def report_duplicate_keys(doc: Document) -> None:
    """Record every key written twice in one mapping of C{doc}."""
    seen = set()

    def walk(node: Any, path: Path) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, LineMap):
            for key, first, line in node.duplicates:
                doc.add(
                    line,
                    path + (key,),
                    f"duplicate key {key!r}"
                    f" (also at line {first}; expected each key once)",
                )
            for key, value in node.items():
                walk(value, path + (key,))
        elif isinstance(node, LineList):
            for index, value in enumerate(node):
                walk(value, path + (index,))

    walk(doc.data, ())
