"""
YAML with line numbers: a SafeLoader whose mappings and sequences remember
the line of every key and item, and which notices duplicated keys (plain
PyYAML keeps the last value without a word).

Used only inside the loader: the model receives plain dicts and lists
(L{plain}).
"""

from typing import Any, Dict, Iterator, List, Mapping, Tuple

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, SequenceNode

_MERGE_TAG = "tag:yaml.org,2002:merge"


class LineMap(dict):
    """
    A mapping read from YAML.

    @ivar line: the (1-based) line where the mapping starts.
    @ivar lines: the line of each key.
    @ivar duplicates: C{(key, first line, line)} for each key written twice.
    """

    __slots__ = ("line", "lines", "duplicates")

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        self.lines: Dict[Any, int] = {}
        self.duplicates: List[Tuple[Any, int, int]] = []


class LineList(list):
    """
    A sequence read from YAML.

    @ivar line: the (1-based) line where the sequence starts.
    @ivar lines: the line of each item, by index.
    """

    __slots__ = ("line", "lines")

    def __init__(self) -> None:
        super().__init__()
        self.line = 0
        self.lines: List[int] = []


class LineLoader(yaml.SafeLoader):
    """A SafeLoader building L{LineMap} and L{LineList} values."""

    def construct_yaml_map(self, node: MappingNode) -> Iterator[LineMap]:
        data = LineMap()
        data.line = node.start_mark.line + 1
        yield data
        self._fill_mapping(data, node)

    def construct_yaml_seq(self, node: SequenceNode) -> Iterator[LineList]:
        data = LineList()
        data.line = node.start_mark.line + 1
        yield data
        for child in node.value:
            data.append(self.construct_object(child, deep=True))
            data.lines.append(child.start_mark.line + 1)

    def _fill_mapping(self, data: LineMap, node: MappingNode) -> None:
        # Keys merged in with "<<" may be overridden; only keys written in
        # this mapping itself count as duplicates of each other.
        own = {id(key) for key, _ in node.value if key.tag != _MERGE_TAG}
        self.flatten_mapping(node)
        written: Dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found an unhashable key",
                    key_node.start_mark,
                ) from None
            line = key_node.start_mark.line + 1
            if id(key_node) in own:
                if key in written:
                    data.duplicates.append((key, written[key], line))
                written[key] = line
            data[key] = self.construct_object(value_node, deep=True)
            data.lines[key] = line


LineLoader.add_constructor("tag:yaml.org,2002:map", LineLoader.construct_yaml_map)
LineLoader.add_constructor("tag:yaml.org,2002:seq", LineLoader.construct_yaml_seq)


def load_yaml(text: bytes) -> Tuple[Any, int]:
    """
    Parse one YAML document.

    @return: the document (None when there is none) and the line it starts on.
    @raise yaml.YAMLError: on a syntax error (with C{problem_mark} when
        PyYAML knows where).
    """
    loader = LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, 1
        return loader.construct_document(node), node.start_mark.line + 1
    finally:
        loader.dispose()


def plain(value: Any) -> Any:
    """A copy of C{value} made of plain dicts and lists (tuples become lists)."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value
